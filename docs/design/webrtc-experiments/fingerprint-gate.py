# Loopback: "phone" webrtcbin OFFERS (recvonly H.264, like robotctl v2 would), "robot" webrtcbin ANSWERS (sendonly).
import sys, time, re, gi
gi.require_version('Gst','1.0'); gi.require_version('GstWebRTC','1.0'); gi.require_version('GstSdp','1.0'); gi.require_version('GstRtp','1.0'); gi.require_version('GstVideo','1.0')
from gi.repository import Gst, GstWebRTC, GstSdp, GLib, GstRtp, GstVideo
import random
LOSS=float(sys.argv[2]) if len(sys.argv)>2 else 0.0
NACK=(sys.argv[3]!='nonack') if len(sys.argv)>3 else True
dropped=[0]
Gst.init(None)
TWCC='http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01'
DUR=float(sys.argv[1]) if len(sys.argv)>1 else 8
KEEP=[]; DEPAY=[]; frames=[0]; keyreq=[0]; T0=time.time()
phone=Gst.Pipeline.new('phone'); wp=Gst.ElementFactory.make('webrtcbin','phone_w'); wp.set_property('bundle-policy','max-bundle'); phone.add(wp)
def on_pad(el, pad):
    b=Gst.parse_bin_from_description('rtph264depay name=depay request-keyframe=true wait-for-keyframe=true ! h264parse ! avdec_h264 ! fakesink name=fs signal-handoffs=true sync=false', True)
    phone.add(b); b.sync_state_with_parent(); pad.link(b.get_static_pad('sink')); DEPAY.append(b.get_static_pad('sink').get_peer() and b)
    b.get_by_name('fs').connect('handoff', lambda *a: frames.__setitem__(0, frames[0]+1))
wp.connect('pad-added', on_pad)
phone.set_state(Gst.State.PLAYING)
tp=wp.emit('add-transceiver', GstWebRTC.WebRTCRTPTransceiverDirection.RECVONLY, Gst.Caps.from_string(
  'application/x-rtp,media=video,encoding-name=H264,payload=102,clock-rate=90000,packetization-mode=(string)1,profile-level-id=(string)42e01f,extmap-3=(string)'+TWCC))
tp.set_property('do-nack', NACK)
p=Gst.Promise.new(); wp.emit('create-offer', None, p); p.wait(); R=p.get_reply(); off=R.get_value('offer'); KEEP.append((p,R,off))
otxt=off.sdp.as_text(); print('=== OFFER (phone)\n'+otxt)
p=Gst.Promise.new(); wp.emit('set-local-description', off, p); p.wait()
# robot: parse offer, pick pt + twcc id, build pipeline accordingly
pt=int(re.search(r'a=fmtp:(\d+) [^\r\n]*packetization-mode=1[^\r\n]*', otxt).group(1))
tw=int(re.search(r'a=extmap:(\d+) '+re.escape(TWCC), otxt).group(1))
SSRC=424242
robot=Gst.parse_launch(
 'videotestsrc is-live=true pattern=ball ! video/x-raw,width=320,height=240,framerate=15/1 ! '
 'x264enc name=enc tune=zerolatency speed-preset=ultrafast key-int-max=30 bitrate=300 ! video/x-h264,profile=constrained-baseline ! '
 'h264parse config-interval=-1 ! rtph264pay name=pay pt=%d ssrc=%d config-interval=-1 aggregate-mode=zero-latency mtu=1200 ! '
 'capssetter caps="application/x-rtp,profile-level-id=(string)42e01f" ! valve name=gate drop=true drop-mode=forward-sticky-events ! webrtcbin name=w bundle-policy=max-bundle' % (pt, SSRC))
wr=robot.get_by_name('w')
def drop_probe(pad, info):
    if LOSS>0 and info.type & Gst.PadProbeType.BUFFER and random.random()<LOSS:
        dropped[0]+=1; return Gst.PadProbeReturn.DROP
    return Gst.PadProbeReturn.OK
def deep_added(bin_, sub, el):
    f=el.get_factory()
    if f and f.get_name()=='nicesink': el.get_static_pad('sink').add_probe(Gst.PadProbeType.BUFFER, drop_probe)
wr.connect('deep-element-added', deep_added)
ext=GstRtp.RTPHeaderExtension.create_from_uri(TWCC); ext.set_id(tw); robot.get_by_name('pay').emit('add-extension', ext)
def probe(pad, info):
    ev=info.get_event()
    if ev.type==Gst.EventType.CUSTOM_UPSTREAM and ev.get_structure().get_name()=='GstForceKeyUnit': keyreq[0]+=1; print('ForceKeyUnit at encoder', round(time.time()-T0,2))
    return Gst.PadProbeReturn.OK
robot.get_by_name('enc').get_static_pad('src').add_probe(Gst.PadProbeType.EVENT_UPSTREAM, probe)
wr.connect('on-ice-candidate', lambda el, m, c: wp.emit('add-ice-candidate', m, c))
wp.connect('on-ice-candidate', lambda el, m, c: wr.emit('add-ice-candidate', m, c))
for w_ in (wr, wp):
    w_.connect('notify::ice-connection-state', lambda el, ps: print(el.get_name(), 'ice', el.get_property('ice-connection-state').value_nick, round(time.time()-T0,2)))
    w_.connect('notify::connection-state', lambda el, ps: print(el.get_name(), 'pc', el.get_property('connection-state').value_nick, round(time.time()-T0,2)))
robot.set_state(Gst.State.READY)
tr=wr.emit('get-transceiver', 0)
tr.set_property('direction', GstWebRTC.WebRTCRTPTransceiverDirection.SENDONLY); tr.set_property('do-nack', True)
tr.set_property('codec-preferences', Gst.Caps.from_string('application/x-rtp,media=video,encoding-name=H264,payload=%d,clock-rate=90000,packetization-mode=(string)1,profile-level-id=(string)42e01f,ssrc=(uint)%d,extmap-%d=(string)%s'%(pt,SSRC,tw,TWCC)))
robot.set_state(Gst.State.PLAYING)
import hashlib, base64
FP=[]
def on_pem(el, ps):
    pem=el.get_property('peer-pem')
    der=base64.b64decode(''.join(l for l in pem.splitlines() if not l.startswith('-----')))
    fp=':'.join('%02X'%b for b in hashlib.sha256(der).digest())
    FP.append(fp)
    if fp==SDPFP: robot.get_by_name('gate').set_property('drop', False)
    print('peer-pem notify (inside DTLS verify), sha-256', fp[:23], '... SDP says', SDPFP[:23], 'MATCH' if fp==SDPFP else 'MISMATCH', round(time.time()-T0,2))
def deep2(bin_, sub, el):
    f=el.get_factory()
    if f and f.get_name()=='dtlssrtpdec': el.connect('notify::peer-pem', on_pem)
wr.connect('deep-element-added', deep2)
def negotiate():
    global SDPFP
    t=otxt
    if 'tamper' in sys.argv: t=re.sub(r'(a=fingerprint:sha-256 )(..)', lambda m: m.group(1)+('00' if m.group(2)!='00' else '11'), t)
    SDPFP=re.search(r'a=fingerprint:sha-256 (\S+)', t).group(1)
    res, msg=GstSdp.SDPMessage.new_from_text(t); o2=GstWebRTC.WebRTCSessionDescription.new(GstWebRTC.WebRTCSDPType.OFFER, msg); KEEP.append(o2)
    p=Gst.Promise.new(); wr.emit('set-remote-description', o2, p); p.wait()
    p=Gst.Promise.new(); wr.emit('create-answer', None, p); p.wait(); R=p.get_reply(); ans=R.get_value('answer'); KEEP.append((p,R,ans))
    print('=== ANSWER (robot)\n'+ans.sdp.as_text())
    p=Gst.Promise.new(); wr.emit('set-local-description', ans, p); p.wait()
    p=Gst.Promise.new(); wp.emit('set-remote-description', ans, p); p.wait()
    return False
GLib.timeout_add(300, negotiate)
def pli():
    print('phone: sending upstream ForceKeyUnit from the decoder side', round(time.time()-T0,2))
    d=DEPAY[0].get_by_name('depay'); print('sent', d.get_static_pad('src').send_event(GstVideo.video_event_new_upstream_force_key_unit(Gst.CLOCK_TIME_NONE, True, 0)))
    return False
if LOSS==0: GLib.timeout_add(4000, pli)
def stats():
    rb=wr.get_by_name('rtpbin'); s=rb.emit('get-session', 0); ts=s.get_property('twcc-stats'); print('TWCC-STATS robot', ts.to_string() if ts else None)
    def got(p, who):
        st=p.get_reply()
        def each(f, v, _):
            if isinstance(v, Gst.Structure) and v.get_name() in ('outbound-rtp','remote-inbound-rtp','inbound-rtp'): print(who, v.to_string()[:700])
            return True
        st.foreach(each, None)
    wr.emit('get-stats', None, Gst.Promise.new_with_change_func(got, 'robot'))
    wp.emit('get-stats', None, Gst.Promise.new_with_change_func(got, 'phone'))
    return False
GLib.timeout_add(int(DUR*1000)-600, stats)
loop=GLib.MainLoop()
def on_msg(bus, msg, who):
    if msg.type==Gst.MessageType.ERROR: print('BUS', who, msg.parse_error())
    return True
for pl, who in ((robot,'robot'),(phone,'phone')):
    b=pl.get_bus(); b.add_signal_watch(); b.connect('message', on_msg, who)
GLib.timeout_add(int(DUR*1000), loop.quit); loop.run()
print('frames decoded', frames[0], 'keyframe requests', keyreq[0], 'dropped', dropped[0])
robot.set_state(Gst.State.NULL); phone.set_state(Gst.State.NULL)
