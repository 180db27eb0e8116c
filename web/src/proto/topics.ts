/** Topic builders (docs/protocol.md section 4). No other code formats topic strings. */

export const presenceTopic = (id: string) => `user/${id}/isConnected`;
export const profileTopic = (id: string) => `user/${id}/profile`;
export const pairTopic = (robot: string, phone: string) => `pair/${robot}/${phone}`;
export const pairResponseTopic = (robot: string, phone: string) => `pair/${robot}/${phone}/response`;
export const inviteTopic = (robot: string, sid: string) => `invite/${robot}/${sid}`;
export const inviteResponseTopic = (robot: string, sid: string) => `invite/${robot}/${sid}/response`;
export const requestTopic = (sid: string, command: string) => `session/${sid}/${command}/request`;
export const responseTopic = (sid: string, command: string) => `session/${sid}/${command}/response`;
export const responseFilter = (sid: string) => `session/${sid}/+/response`;

/** The `{command}` of a `session/{sid}/{command}/response` topic, or null. */
export function responseCommand(topic: string, sid: string): string | null {
  const m = /^session\/([0-9a-f]{32})\/([a-z][a-z0-9_]{0,31})\/response$/.exec(topic);
  return m && m[1] === sid ? m[2] : null;
}

/** Does an MQTT filter (with `+` only, the app subscribes to no `#`) match a topic? */
export function matches(filter: string, topic: string): boolean {
  const f = filter.split("/");
  const t = topic.split("/");
  if (f.length !== t.length) return false;
  return f.every((x, i) => x === "+" || x === t[i]);
}
