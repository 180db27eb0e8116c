/**
 * The app's state in IndexedDB (never localStorage: keys are non-extractable CryptoKeys,
 * which IndexedDB stores as they are).
 */
import type { OwnerKey } from "../proto/keys";

/** The phone's own profile. */
export interface Me {
  e164: string;
  nickname: string;
  phoneId: string;
}

/** A paired robot: what 6.5 says to keep. */
export interface PairedRobot {
  robot: string;
  nickname: string;
  broker: string;
  key: OwnerKey;
  pairedAt: number;
}

const DB = "robotd-phone";
const STORE = "kv";

function open(): Promise<IDBDatabase> {
  return new Promise((resolve, reject) => {
    const r = indexedDB.open(DB, 1);
    r.onupgradeneeded = () => r.result.createObjectStore(STORE);
    r.onsuccess = () => resolve(r.result);
    r.onerror = () => reject(r.error);
  });
}

let dbp: Promise<IDBDatabase> | null = null;
function db() {
  return (dbp ??= open());
}

async function get<T>(key: string): Promise<T | undefined> {
  const d = await db();
  return new Promise((resolve, reject) => {
    const r = d.transaction(STORE, "readonly").objectStore(STORE).get(key);
    r.onsuccess = () => resolve(r.result as T | undefined);
    r.onerror = () => reject(r.error);
  });
}

async function put(key: string, value: unknown): Promise<void> {
  const d = await db();
  return new Promise((resolve, reject) => {
    const t = d.transaction(STORE, "readwrite");
    t.objectStore(STORE).put(value, key);
    t.oncomplete = () => resolve();
    t.onerror = () => reject(t.error);
  });
}

export const store = {
  me: () => get<Me>("me"),
  setMe: (m: Me) => put("me", m),
  mqttClientId: () => get<string>("mqtt-client-id"),
  setMqttClientId: (id: string) => put("mqtt-client-id", id),
  /** The broker password (docs/install.md: each phone logs in with its phone ID as user
   * name); kept here, never in localStorage or the URL. */
  brokerPassword: () => get<string>("broker-password"),
  setBrokerPassword: (p: string) => put("broker-password", p),
  robots: async () => (await get<PairedRobot[]>("robots")) ?? [],
  async upsertRobot(r: PairedRobot) {
    const all = (await this.robots()).filter((x) => x.robot !== r.robot);
    all.push(r);
    await put("robots", all);
  },
};
