# Robot webrtcbin answering a (hand-written, Chromium-like) offer. Modes:
#  naive : sendonly transceiver, codec-preferences pt 96 42e01f (no pinning to offer)
#  pinned: codec-preferences = offer's pt for H264 pm=1 42e01f, its rtx, twcc extmap id from the offer
import sys, gi, re
gi.require_version('Gst','1.0'); gi.require_version('GstWebRTC','1.0'); gi.require_version('GstSdp','1.0')
from gi.repository import Gst, GstWebRTC, GstSdp, GLib
Gst.init(None)
TWCC='http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01'
mode=sys.argv[1]
offer_txt=open('chrome_offer.sdp').read().replace('\n','\r\n')
pipe=Gst.Pipeline.new()
w=Gst.ElementFactory.make('webrtcbin'); w.set_property('bundle-policy','max-bundle'); pipe.add(w)
pipe.set_state(Gst.State.PLAYING)
if mode=='naive':
    prefs='application/x-rtp,media=video,encoding-name=H264,payload=96,clock-rate=90000,packetization-mode=(string)1,profile-level-id=(string)42e01f'
else:
    # pick the pt like robotd would: H264, packetization-mode=1, profile-level-id 42e01f (constrained baseline)
    pt=None
    for m in re.finditer(r'a=fmtp:(\d+) (.*)', offer_txt):
        if 'packetization-mode=1' in m.group(2) and 'profile-level-id=42e01f' in m.group(2): pt=int(m.group(1)); break
    twcc=int(re.search(r'a=extmap:(\d+) '+re.escape(TWCC), offer_txt.split('m=video')[1]).group(1))
    prefs=('application/x-rtp,media=video,encoding-name=H264,payload=%d,clock-rate=90000,packetization-mode=(string)1,'
           'profile-level-id=(string)42e01f,level-asymmetry-allowed=(string)1,extmap-%d=(string)%s' % (pt, twcc, TWCC))
t=w.emit('add-transceiver', GstWebRTC.WebRTCRTPTransceiverDirection.SENDONLY, Gst.Caps.from_string(prefs))
t.set_property('do-nack', True)
res, sdpmsg = GstSdp.SDPMessage.new_from_text(offer_txt)
offer=GstWebRTC.WebRTCSessionDescription.new(GstWebRTC.WebRTCSDPType.OFFER, sdpmsg)
p=Gst.Promise.new(); w.emit('set-remote-description', offer, p); p.wait(); print('set-remote:', p.get_reply())
p=Gst.Promise.new(); w.emit('create-answer', None, p); p.wait(); R=p.get_reply()
ans=R.get_value('answer')
if ans is None: print('NO ANSWER', R); sys.exit()
txt=ans.sdp.as_text(); print(txt); print('answer bytes', len(txt))
for i in range(4):
    tr=w.emit('get-transceiver', i)
    if tr: print('transceiver', i, 'mid', tr.get_property('mid'), 'dir', tr.get_property('direction').value_nick, 'kind', tr.get_property('kind').value_nick)
pipe.set_state(Gst.State.NULL)
