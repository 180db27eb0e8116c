// The test vectors of docs/protocol.md section 12 (values copied from there).
import { describe, expect, it } from "vitest";
import { fromHex, toHex, utf8 } from "../src/proto/bytes";
import { keyedClientId, md5ClientId, normaliseE164, PhoneNumberError } from "../src/proto/identity";
import { base32Decode, PairingUriError, parsePairingUri } from "../src/proto/pairing-uri";
import { deriveOwnerKeyBytes, deriveSessionKeyBytes, hmacKey, importOwnerKey } from "../src/proto/keys";
import { authProps, macInput, sign, verify } from "../src/proto/mac";

const S = fromHex("000102030405060708090a0b0c0d0e0f")!;
const NONCE = fromHex("a0a1a2a3a4a5a6a7a8a9aaabacadaeaf")!;
const ROBOT = "0123456789abcdef0123456789abcdef";
const PHONE = "36940d0ece18aebf69d0ef6825534e24";
const SID = "00112233445566778899aabbccddeeff";
const ROBOT_NONCE = "ffeeddccbbaa99887766554433221100";
const K_HEX = "a0369cd9bece6225fa9218e192b9d2f976f5e830a3dc8d76060f9ba004da8f0f";
const KS_HEX = "61edd9aca22ea26a0234b90e26ea7a69e592d8b50fa7b4d1ddbe38c2d10458b8";

async function sha256(b: Uint8Array<ArrayBuffer>) {
  return toHex(await crypto.subtle.digest("SHA-256", b));
}

describe("client IDs (2.2, 12.2)", () => {
  it("md5 of E.164", () => {
    expect(md5ClientId("+48555555555")).toBe(PHONE);
  });
  it("the keyed scheme", async () => {
    expect(await keyedClientId(utf8("key"), "+48555555555")).toBe("b3a048ad65831b3989e834911c23e155");
  });
  it("normalises to E.164 and refuses numbers without a country code", () => {
    expect(normaliseE164("+48 555 555 555")).toBe("+48555555555");
    expect(normaliseE164(" +48 (555) 555-555 ")).toBe("+48555555555");
    expect(normaliseE164("0048555555555")).toBe("+48555555555");
    expect(() => normaliseE164("555 555 555")).toThrow(PhoneNumberError);
    expect(() => normaliseE164("+48 5")).toThrow(PhoneNumberError);
    expect(() => normaliseE164("")).toThrow(PhoneNumberError);
  });
});

describe("pairing URI (6.2, 12.2)", () => {
  const uri =
    "robotd://pair?v=1&robot=0123456789abcdef0123456789abcdef&secret=AAAQEAYEAUDAOCAJBIFQYDIOB4&broker=mqtts%3A%2F%2Fbroker.example.com%3A8883";
  it("base32 of S", () => {
    expect(toHex(base32Decode("AAAQEAYEAUDAOCAJBIFQYDIOB4")!)).toBe(toHex(S));
  });
  it("parses the vector", () => {
    const p = parsePairingUri(uri);
    expect(p.robot).toBe(ROBOT);
    expect(toHex(p.secret)).toBe(toHex(S));
    expect(p.broker).toBe("mqtts://broker.example.com:8883");
  });
  it("accepts any order, unknown parameters, a lowercase or padded secret", () => {
    const p = parsePairingUri(
      "robotd://pair?broker=mqtt%3A%2F%2F127.0.0.1%3A1883&x=y&secret=aaaqeayeaudaocajbifqydiob4======&robot=0123456789abcdef0123456789abcdef&v=1",
    );
    expect(toHex(p.secret)).toBe(toHex(S));
    expect(p.broker).toBe("mqtt://127.0.0.1:1883");
  });
  it.each([
    ["another scheme", "https://pair?v=1&robot=0123456789abcdef0123456789abcdef&secret=AAAQEAYEAUDAOCAJBIFQYDIOB4"],
    ["v=2", uri.replace("v=1", "v=2")],
    ["no v", uri.replace("v=1&", "")],
    ["a short robot", uri.replace("robot=0123456789abcdef0123456789abcdef", "robot=0123")],
    ["an uppercase robot", uri.replace("robot=0123456789abcdef0123456789abcdef", "robot=0123456789ABCDEF0123456789ABCDEF")],
    ["a short secret", uri.replace("AAAQEAYEAUDAOCAJBIFQYDIOB4", "AAAQEAYEAUDAOCAJBIFQYDIO")],
    ["a long secret", uri.replace("AAAQEAYEAUDAOCAJBIFQYDIOB4", "AAAQEAYEAUDAOCAJBIFQYDIOB4AA")],
    ["a non-base32 secret", uri.replace("AAAQEAYEAUDAOCAJBIFQYDIOB4", "AAAQEAYEAUDAOCAJBIFQYDIOB1")],
    ["no secret", uri.replace("secret=AAAQEAYEAUDAOCAJBIFQYDIOB4&", "")],
    ["a repeated robot", uri + "&robot=0123456789abcdef0123456789abcdef"],
  ])("refuses %s", (_name, bad) => {
    expect(() => parsePairingUri(bad)).toThrow(PairingUriError);
  });
});

describe("key schedule (5.3, 12.3, 12.4)", () => {
  it("K", async () => {
    expect(toHex(await deriveOwnerKeyBytes(S, NONCE, ROBOT, PHONE))).toBe(K_HEX);
  });
  it("Ks from K imported non-extractable", async () => {
    const k = await importOwnerKey(fromHex(K_HEX)!);
    expect(k.hkdf.extractable).toBe(false);
    expect(k.mac.extractable).toBe(false);
    expect(toHex(await deriveSessionKeyBytes(k.hkdf, SID, ROBOT_NONCE))).toBe(KS_HEX);
  });
});

describe("message MACs (5.2, 12.5)", () => {
  const cases = [
    {
      name: "pairing request",
      key: toHex(S),
      topic: `pair/${ROBOT}/${PHONE}`,
      from: PHONE,
      seq: "1764072000000",
      ts: "1764072000000",
      payload: '{"nickname":"Alice","nonce":"a0a1a2a3a4a5a6a7a8a9aaabacadaeaf"}',
      len: 204,
      sha: "9c8dbdd5003215902b89dd43c402b52c4c4614d5e728ebbd4a0f5a841837b08d",
      mac: "ee1e50b7af85f38e6850f1163f0dce2142c56230324a2f851184846a601679c7",
    },
    {
      name: "drive request",
      key: KS_HEX,
      topic: `session/${SID}/drive/request`,
      from: PHONE,
      seq: "7",
      ts: "1764072000000",
      payload: '{"linear":0.5,"angular":0.0,"ms":500}',
      len: 150,
      sha: "1d204d5b81372141506bc598322a550335ead3bdc3860c95a4be8dabd11fdd38",
      mac: "6c4e45b5753e8d2b326c896b062a445d9b68d75b6dc26fbfdfd76340db3d414a",
    },
    {
      name: "paired response",
      key: K_HEX,
      topic: `pair/${ROBOT}/${PHONE}/response`,
      from: ROBOT,
      seq: "1764071000001",
      ts: "1764072000250",
      payload: '{"status":"paired","robot":"0123456789abcdef0123456789abcdef","nickname":"Rover"}',
      len: 231,
      sha: "b5c5ca6822615fbe64c73ade8dee414cc6fdf218c6788ccf36dfbb17428a432a",
      mac: "abcdef71301d44390f34dbfab4ac98573e3764ccfcbabc2f588e78f99e44e346",
    },
    {
      name: "invite",
      key: K_HEX,
      topic: `invite/${ROBOT}/${SID}`,
      from: PHONE,
      seq: "1764072000001",
      ts: "1764072060000",
      payload:
        '{"media":{"host":"192.0.2.10","port":5004},"video":{"codecs":["H264"],"max_width":1280,"max_height":720,"max_fps":30,"max_kbps":2500}}',
      len: 277,
      sha: "206e466a824401c4c5788d21523290ab773aae86c4c45cea07127b4ad5c3456e",
      mac: "082b3d01598475437d177512a46501e17cacefd0b77667958727778ce16c9178",
    },
    {
      name: "drive response",
      key: KS_HEX,
      topic: `session/${SID}/drive/response`,
      from: ROBOT,
      seq: "1",
      ts: "1764072000040",
      payload: '{"status":"ok","re":7}',
      len: 136,
      sha: "916ede3113da3cdb92d27a2382f6fce1da06f1efed59de4cd37ea85cd9df534a",
      mac: "eddb626413bb9401cf4c95da135bf06f6716dc3d2fe5b49ca84ba535484aae68",
    },
  ];
  it.each(cases)("$name", async (c) => {
    const input = macInput(c.topic, c.from, c.seq, c.ts, utf8(c.payload));
    expect(input.length).toBe(c.len);
    expect(await sha256(input)).toBe(c.sha);
    const key = await hmacKey(fromHex(c.key)!);
    expect(await sign(key, c.topic, c.from, c.seq, c.ts, utf8(c.payload))).toBe(c.mac);
    const props = authProps({ from: c.from, seq: c.seq, ts: c.ts, mac: c.mac });
    expect(props).not.toBeNull();
    expect(await verify(key, c.topic, props!, utf8(c.payload))).toBe(true);
    // one byte changed in the payload, or the topic, fails
    expect(await verify(key, c.topic, props!, utf8(c.payload.replace("}", " }")))).toBe(false);
    expect(await verify(key, c.topic + "x", props!, utf8(c.payload))).toBe(false);
  });
  it("a Ks derived from K signs the drive vector", async () => {
    const k = await importOwnerKey(fromHex(K_HEX)!);
    const ks = await hmacKey(await deriveSessionKeyBytes(k.hkdf, SID, ROBOT_NONCE));
    const c = cases[1];
    expect(await sign(ks, c.topic, c.from, c.seq, c.ts, utf8(c.payload))).toBe(c.mac);
  });
  it("refuses missing, repeated and non-canonical properties", () => {
    const ok = { from: PHONE, seq: "7", ts: "1", mac: "a".repeat(64) };
    expect(authProps(ok)).not.toBeNull();
    expect(authProps({ ...ok, seq: "007" })).toBeNull();
    expect(authProps({ ...ok, seq: "-1" })).toBeNull();
    expect(authProps({ ...ok, ts: "18446744073709551616" })).toBeNull();
    expect(authProps({ ...ok, mac: "a".repeat(63) })).toBeNull();
    expect(authProps({ ...ok, from: [PHONE, PHONE] })).toBeNull();
    const { mac: _m, ...noMac } = ok;
    expect(authProps(noMac)).toBeNull();
  });
});
