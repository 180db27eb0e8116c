# Loopback experiment: "robot" webrtcbin (sendonly H.264, offers) -> "phone" webrtcbin (answers, decodes)
import sys, time, gi
gi.require_version('Gst','1.0'); gi.require_version('GstWebRTC','1.0'); gi.require_version('GstSdp','1.0'); gi.require_version('GstRtp','1.0')
from gi.repository import Gst, GstWebRTC, GstSdp, GLib, GstRtp
Gst.init(None)
TWCC='http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01'
DUR=float(sys.argv[1]) if len(sys.argv)>1 else 8
PREF=len(sys.argv)>2 and sys.argv[2]=='pref'
robot = Gst.parse_launch(
 'videotestsrc is-live=true pattern=ball ! video/x-raw,width=320,height=240,framerate=15/1 ! '
 'x264enc name=enc tune=zerolatency speed-preset=ultrafast key-int-max=30 bitrate=300 ! video/x-h264,profile=constrained-baseline ! '
 'h264parse config-interval=-1 ! rtph264pay name=pay pt=96 ssrc=12345 config-interval=-1 aggregate-mode=zero-latency mtu=1200 ! '
 'capssetter join=true replace=false caps="application/x-rtp,profile-level-id=(string)42e01f" ! '
 'capsfilter name=pf ! webrtcbin name=w bundle-policy=max-bundle')
phone = Gst.Pipeline.new('phone')
wr = robot.get_by_name('w')
wp = Gst.ElementFactory.make('webrtcbin','p'); wp.set_property('bundle-policy','max-bundle'); phone.add(wp)
pay = robot.get_by_name('pay')
ext = GstRtp.RTPHeaderExtension.create_from_uri(TWCC); ext.set_id(1); pay.emit('add-extension', ext)
robot.get_by_name('pf').set_property('caps', Gst.Caps.from_string('application/x-rtp,media=video,encoding-name=H264,payload=96,clock-rate=90000,packetization-mode=(string)1,ssrc=(uint)12345,extmap-1=(string)'+TWCC))
frames=[0]; keyreq=[0]; KEEP=[]
def on_pad(el, pad):
    if pad.direction != Gst.PadDirection.SRC: return
    b = Gst.parse_bin_from_description('rtph264depay request-keyframe=true wait-for-keyframe=true ! h264parse ! avdec_h264 ! fakesink name=fs signal-handoffs=true sync=false', True)
    phone.add(b); b.sync_state_with_parent(); pad.link(b.get_static_pad('sink'))
    b.get_by_name('fs').connect('handoff', lambda *a: frames.__setitem__(0, frames[0]+1))
wp.connect('pad-added', on_pad)
wr.connect('on-ice-candidate', lambda el, m, c: wp.emit('add-ice-candidate', m, c))
wp.connect('on-ice-candidate', lambda el, m, c: wr.emit('add-ice-candidate', m, c))
# watch ForceKeyUnit reaching the encoder
def probe(pad, info):
    ev = info.get_event()
    if ev.type == Gst.EventType.CUSTOM_UPSTREAM and ev.get_structure().get_name()=='GstForceKeyUnit': keyreq[0]+=1
    return Gst.PadProbeReturn.OK
robot.get_by_name('enc').get_static_pad('src').add_probe(Gst.PadProbeType.EVENT_UPSTREAM, probe)
def on_answer(p, _):
    p.wait(); R=p.get_reply(); ans = R.get_value('answer'); KEEP.append((p,R,ans))
    print('=== ANSWER (phone)\n'+ans.sdp.as_text())
    wp.emit('set-local-description', ans, None); wr.emit('set-remote-description', ans, None)
def on_offer(p, _):
    p.wait(); R=p.get_reply(); off = R.get_value('offer'); KEEP.append((p,R,off))
    print('=== OFFER (robot)\n'+off.sdp.as_text())
    wr.emit('set-local-description', off, None); wp.emit('set-remote-description', off, None)
    pa=Gst.Promise.new(); wp.emit('create-answer', None, pa); on_answer(pa, None)
def on_neg(el):
    print("negotiation-needed")
    t = wr.emit('get-transceiver', 0)
    po=Gst.Promise.new(); wr.emit('create-offer', None, po); on_offer(po, None)
#wr.connect('on-negotiation-needed', on_neg)
def setup_trans():
    t = wr.emit('get-transceiver', 0)
    t.set_property('direction', GstWebRTC.WebRTCRTPTransceiverDirection.SENDONLY)
    t.set_property('do-nack', True); t.set_property('fec-type', GstWebRTC.WebRTCFECType.NONE)
    if PREF: t.set_property('codec-preferences', Gst.Caps.from_string('application/x-rtp,media=video,encoding-name=H264,payload=96,clock-rate=90000,packetization-mode=(string)1,profile-level-id=(string)42e01f,level-asymmetry-allowed=(string)1,ssrc=(uint)12345,extmap-1=(string)'+TWCC))
for w_ in (wr, wp):
    w_.connect('notify::connection-state', lambda el, ps: print(el.get_name(), 'connection-state', el.get_property('connection-state').value_nick, round(time.time()-T0,2)))
    w_.connect('notify::ice-connection-state', lambda el, ps: print(el.get_name(), 'ice-connection-state', el.get_property('ice-connection-state').value_nick, round(time.time()-T0,2)))
wp.connect('on-new-transceiver', lambda el, t: t.set_property('do-nack', True))
T0=time.time()
phone.set_state(Gst.State.PLAYING)
robot.set_state(Gst.State.READY)
setup_trans()
robot.set_state(Gst.State.PLAYING)
loop = GLib.MainLoop()
def on_msg(bus, msg, who):
    if msg.type in (Gst.MessageType.ERROR, Gst.MessageType.WARNING):
        print('BUS', who, msg.type, msg.parse_error() if msg.type==Gst.MessageType.ERROR else msg.parse_warning())
    return True
for pl, who in ((robot,'robot'),(phone,'phone')):
    b=pl.get_bus(); b.add_signal_watch(); b.connect('message', on_msg, who)
def dump_stats():
    def got(p, who):
        s = p.get_reply()
        print('=== STATS', who)
        def each(field, val, _):
            if isinstance(val, Gst.Structure):
                print(' ', val.to_string()[:600])
            return True
        s.foreach(each, None)
    wr.emit('get-stats', None, Gst.Promise.new_with_change_func(got, 'robot'))
    wp.emit('get-stats', None, Gst.Promise.new_with_change_func(got, 'phone'))
    return False
GLib.timeout_add(200, lambda: (on_neg(wr), False)[1])
GLib.timeout_add(int(DUR*1000)-500, dump_stats)
def twcc():
    rb = wr.get_by_name('rtpbin')
    sess = rb.emit('get-session', 0)
    print('TWCC-STATS robot', sess.get_property('twcc-stats'))
    return False
GLib.timeout_add(int(DUR*1000)-700, twcc)
GLib.timeout_add(int(DUR*1000), loop.quit)
loop.run()
print('frames decoded', frames[0], 'ForceKeyUnit at encoder', keyreq[0])
robot.set_state(Gst.State.NULL); phone.set_state(Gst.State.NULL)
