#!/usr/bin/env python3
"""Recompute every test vector of docs/protocol.md from scratch.

Python 3 standard library only (hashlib, hmac, base64, urllib); HKDF is
written out below from RFC 5869 and checked against the RFC's own test case
first. It shares no code with robotd, so a match is independent evidence.

    python3 docs/vectors.py        # prints every intermediate value, asserts the published results

If the third-party `cryptography` package happens to be installed, its HKDF
is used as a second, independent check; without it that step is skipped.
Exit status 0 means every assertion held.
"""

import base64
import hashlib
import hmac
import urllib.parse


# --- primitives ---------------------------------------------------------------

def hmac_sha256(key: bytes, data: bytes) -> bytes:
    return hmac.new(key, data, hashlib.sha256).digest()


def hkdf_extract(salt: bytes, ikm: bytes) -> bytes:
    """RFC 5869 section 2.2: PRK = HMAC-Hash(salt, IKM)."""
    return hmac_sha256(salt, ikm)


def hkdf_expand(prk: bytes, info: bytes, length: int) -> bytes:
    """RFC 5869 section 2.3: T(i) = HMAC-Hash(PRK, T(i-1) | info | i), OKM = first L bytes."""
    assert length <= 255 * 32
    okm, t, i = b"", b"", 1
    while len(okm) < length:
        t = hmac_sha256(prk, t + info + bytes([i]))
        okm += t
        i += 1
    return okm[:length]


def hkdf(ikm: bytes, salt: bytes, info: bytes, length: int) -> bytes:
    return hkdf_expand(hkdf_extract(salt, ikm), info, length)


def mac_input(topic: str, sender: str, seq: int, ts: int, payload: bytes) -> bytes:
    """The exact bytes the protocol MAC covers."""
    return b"robotd/1\n" + "\n".join([topic, sender, str(seq), str(ts)]).encode("ascii") + b"\n" + payload


def message_mac(key: bytes, topic: str, sender: str, seq: int, ts: int, payload: bytes) -> str:
    return hmac_sha256(key, mac_input(topic, sender, seq, ts, payload)).hex()


def escaped(b: bytes) -> str:
    """Bytes as a C-style string literal: printable ASCII as is, \\n, \\", \\\\, anything else \\xNN."""
    out = []
    for c in b:
        if c == 0x0A:
            out.append("\\n")
        elif c == 0x22:
            out.append('\\"')
        elif c == 0x5C:
            out.append("\\\\")
        elif 0x20 <= c < 0x7F:
            out.append(chr(c))
        else:
            out.append("\\x%02x" % c)
    return '"' + "".join(out) + '"'


def show(label: str, value) -> None:
    if isinstance(value, bytes):
        value = value.hex()
    print(f"  {label:<28} {value}")


def check(label: str, got: str, want: str) -> None:
    assert got == want, f"{label}: got {got}, published {want}"
    print(f"  {label:<28} {got}  OK (matches published value)")


# --- self-test of the HKDF above: RFC 5869 appendix A.1 ------------------------

rfc_prk = hkdf_extract(bytes.fromhex("000102030405060708090a0b0c"), bytes([0x0B] * 22))
assert rfc_prk.hex() == "077709362c2e32df0ddc3f0dc47bba6390b6c73bb50f9c3122ec844ad7c2b3e5"
assert hkdf_expand(rfc_prk, bytes.fromhex("f0f1f2f3f4f5f6f7f8f9"), 42).hex() == (
    "3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf34007208d5b887185865"
)

# --- inputs --------------------------------------------------------------------

S = bytes(range(0x00, 0x10))                 # pairing secret
NONCE = bytes(range(0xA0, 0xB0))             # pairing nonce (phone)
ROBOT_ID = "0123456789abcdef0123456789abcdef"
PHONE = "+48555555555"
SESSION_ID = "00112233445566778899aabbccddeeff"
ROBOT_NONCE = bytes.fromhex("ffeeddccbbaa99887766554433221100")
TS = 1764072000000                          # 2025-11-25T12:00:00Z

print("Inputs")
show("S", S)
show("pairing nonce", NONCE)
show("robotId", ROBOT_ID)
show("phone (E.164)", PHONE)
show("sessionId", SESSION_ID)
show("robotNonce", ROBOT_NONCE)

# --- identities ----------------------------------------------------------------

print("\nIdentities")
show("E.164 as ASCII bytes", PHONE.encode("ascii"))
phone_id = hashlib.md5(PHONE.encode("ascii")).hexdigest()
check("phoneId = md5(E.164)", phone_id, "36940d0ece18aebf69d0ef6825534e24")
keyed_full = hmac_sha256(b"key", PHONE.encode("ascii"))
show("HMAC-SHA256(\"key\", E.164)", keyed_full)
check("keyed ID (first 16 bytes)", keyed_full[:16].hex(), "b3a048ad65831b3989e834911c23e155")

# --- pairing URI -----------------------------------------------------------------

print("\nPairing URI")
secret_b32 = base64.b32encode(S).decode("ascii").rstrip("=")
check("base32(S), no padding", secret_b32, "AAAQEAYEAUDAOCAJBIFQYDIOB4")
assert base64.b32decode(secret_b32 + "=" * (-len(secret_b32) % 8)) == S
broker = "mqtts://broker.example.com:8883"
uri = (
    f"robotd://pair?v=1&robot={ROBOT_ID}&secret={secret_b32}"
    f"&broker={urllib.parse.quote(broker, safe='')}"
)
check(
    "URI (example broker)",
    uri,
    "robotd://pair?v=1&robot=0123456789abcdef0123456789abcdef&secret=AAAQEAYEAUDAOCAJBIFQYDIOB4"
    "&broker=mqtts%3A%2F%2Fbroker.example.com%3A8883",
)
q = urllib.parse.parse_qs(urllib.parse.urlsplit(uri).query, strict_parsing=True)
assert q == {"v": ["1"], "robot": [ROBOT_ID], "secret": [secret_b32], "broker": [broker]}

# --- keys ------------------------------------------------------------------------

print("\nOwner key K = HKDF-SHA256(ikm=S, salt=nonce, info, L=32)")
info_k = b"robotd owner v1\n" + ROBOT_ID.encode("ascii") + b"\n" + phone_id.encode("ascii")
show("salt", NONCE)
show("info (escaped)", escaped(info_k))
show("info (hex)", info_k)
show("info length", len(info_k))
prk_k = hkdf_extract(NONCE, S)
show("PRK = HMAC(salt, S)", prk_k)
K = hkdf_expand(prk_k, info_k, 32)
show("T(1) input = info||01", info_k + b"\x01")
check("K = T(1)", K.hex(), "a0369cd9bece6225fa9218e192b9d2f976f5e830a3dc8d76060f9ba004da8f0f")

print("\nCall keys: ikm=K, salt = hexdecode(sessionId) || robotNonce")
call_salt = bytes.fromhex(SESSION_ID) + ROBOT_NONCE
show("salt (32 bytes)", call_salt)
prk_call = hkdf_extract(call_salt, K)
show("PRK = HMAC(salt, K)", prk_call)
for info in (b"robotd session v1", b"robotd srtp v1", b"robotd srtp audio v1"):
    show(f"info {escaped(info)}", info)
Ks = hkdf_expand(prk_call, b"robotd session v1", 32)
check("Ks (L=32)", Ks.hex(), "61edd9aca22ea26a0234b90e26ea7a69e592d8b50fa7b4d1ddbe38c2d10458b8")
srtp_video = hkdf_expand(prk_call, b"robotd srtp v1", 30)
check("SRTP video key||salt (L=30)", srtp_video.hex(), "149ffed491d44212d2672dae6389779a919e58f9d95716ab76edadfb00b6")
show("  video master key (16)", srtp_video[:16])
show("  video master salt (14)", srtp_video[16:])
srtp_audio = hkdf_expand(prk_call, b"robotd srtp audio v1", 30)
check("SRTP audio key||salt (L=30)", srtp_audio.hex(), "65532e412027e9558121d11c6189bd91739cfb7fe969b8e46f8c1ef78c44")
show("  audio master key (16)", srtp_audio[:16])
show("  audio master salt (14)", srtp_audio[16:])
# SDES-style inline form, for receivers (e.g. libsrtp, srtpdec) that take base64 key||salt.
show("  video key||salt base64", base64.b64encode(srtp_video).decode())
show("  audio key||salt base64", base64.b64encode(srtp_audio).decode())

# --- message MACs ------------------------------------------------------------------

MACS = [
    # (label, key name, key, topic, from, seq, ts, payload, published mac)
    (
        "pairing request (phone, key S)", "S", S,
        f"pair/{ROBOT_ID}/{phone_id}", phone_id, TS, TS,
        b'{"nickname":"Alice","nonce":"a0a1a2a3a4a5a6a7a8a9aaabacadaeaf"}',
        "ee1e50b7af85f38e6850f1163f0dce2142c56230324a2f851184846a601679c7",
    ),
    (
        "drive request (phone, key Ks)", "Ks", Ks,
        f"session/{SESSION_ID}/drive/request", phone_id, 7, TS,
        b'{"linear":0.5,"angular":0.0,"ms":500}',
        "6c4e45b5753e8d2b326c896b062a445d9b68d75b6dc26fbfdfd76340db3d414a",
    ),
    # The three below are additions of docs/protocol.md (not in the design brief);
    # their expected values were first computed by this script and then checked
    # against robotd's Rust implementation (src/auth/mac.rs tests).
    (
        "paired response (robot, key K)", "K", K,
        f"pair/{ROBOT_ID}/{phone_id}/response", ROBOT_ID, 1764071000001, 1764072000250,
        b'{"status":"paired","robot":"0123456789abcdef0123456789abcdef","nickname":"Rover"}',
        "abcdef71301d44390f34dbfab4ac98573e3764ccfcbabc2f588e78f99e44e346",
    ),
    (
        "invite (phone, key K)", "K", K,
        f"invite/{ROBOT_ID}/{SESSION_ID}", phone_id, 1764072000001, 1764072060000,
        b'{"media":{"host":"192.0.2.10","port":5004},"video":{"codecs":["H264"],'
        b'"max_width":1280,"max_height":720,"max_fps":30,"max_kbps":2500}}',
        "082b3d01598475437d177512a46501e17cacefd0b77667958727778ce16c9178",
    ),
    (
        "drive response (robot, key Ks)", "Ks", Ks,
        f"session/{SESSION_ID}/drive/response", ROBOT_ID, 1, 1764072000040,
        b'{"status":"ok","re":7}',
        "eddb626413bb9401cf4c95da135bf06f6716dc3d2fe5b49ca84ba535484aae68",
    ),
]

for label, key_name, key, topic, sender, seq, ts, payload, want in MACS:
    print(f"\nMAC: {label}")
    data = mac_input(topic, sender, seq, ts, payload)
    show("key", f"{key_name} = {key.hex()}")
    show("topic", topic)
    show("from / seq / ts", f"{sender} / {seq} / {ts}")
    show("payload (exact bytes)", payload.decode("utf-8"))
    show("MAC input (escaped)", escaped(data))
    show("MAC input length", f"{len(data)} bytes")
    show("SHA-256 of MAC input", hashlib.sha256(data).hexdigest())
    got = hmac_sha256(key, data).hex()
    check("mac", got, want)

# --- instance marker (2.3) ------------------------------------------------------------------

print("\nInstance marker")
marker_key = hkdf(b"00112233445566778899aabbccddeeff", b"", b"robotd instance marker v1", 32)
check("marker key", marker_key.hex(), "6feadf68de763fdeddc254b6202b838a6122b3878d9351f2993dc4372ebfe823")
check(
    "marker mac",
    hmac_sha256(marker_key, b"7:a0a1a2a3a4a5a6a7a8a9aaabacadaeaf").hex(),
    "93297fe916b6c973f82e54523229a6f9dd7d7858c2d9cb3156a51012ab66f508",
)

# --- optional second implementation ----------------------------------------------------

try:
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF
except ImportError:
    print("\n(cryptography not installed: second HKDF implementation skipped)")
else:
    def lib_hkdf(ikm, salt, info, length):
        return HKDF(algorithm=hashes.SHA256(), length=length, salt=salt, info=info).derive(ikm)

    assert lib_hkdf(S, NONCE, info_k, 32) == K
    assert lib_hkdf(K, call_salt, b"robotd session v1", 32) == Ks
    assert lib_hkdf(K, call_salt, b"robotd srtp v1", 30) == srtp_video
    assert lib_hkdf(K, call_salt, b"robotd srtp audio v1", 30) == srtp_audio
    print("\nHKDF cross-checked against the cryptography package: OK")

print("\nAll published vectors match.")
