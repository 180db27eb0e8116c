// Build-time configuration (vite.config.ts `define`).
declare const __ROBOTD_BROKER_WS__: string;
declare const __ROBOTD_ICE_SERVERS__: RTCIceServer[];
