/** Build-time configuration (vite.config.ts, web/README.md). */
export const config = {
  /** The broker's WebSockets URL (ROBOTD_BROKER_WS). */
  brokerWs: __ROBOTD_BROKER_WS__,
  /** STUN/TURN servers (ROBOTD_ICE_SERVERS); none by default. */
  iceServers: __ROBOTD_ICE_SERVERS__,
  /** MQTT keep-alive, seconds: the broker fires our Will about 1.5 x this after we vanish. */
  keepAliveS: 5,
  /** Reconnect delay bounds, ms (doubling between them). */
  reconnectMinMs: 500,
  reconnectMaxMs: 5000,
  /** How long a pairing waits for a valid `paired` (6.5). */
  pairTimeoutMs: 15000,
  /** How long an invite waits for its answer (the robot answers v2 within 5 s, 7.8). */
  inviteTimeoutMs: 15000,
  /** The video the phone can take (7.8 `video`). */
  video: { max_width: 1280, max_height: 720, max_fps: 30, max_kbps: 2500 },
};
