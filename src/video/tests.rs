//! Tests of the media module. The pipeline tests run real GStreamer pipelines
//! over loopback (127.0.0.1 only) and take the lock below so that only one runs
//! at a time: they are CPU-bound and CI machines are small.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use gstreamer as gst;
use gstreamer::prelude::*;

use super::camera::{CameraFormat, CaptureKind, FrameRate, FrameSize, choose_capture, format_cameras};
use super::encoder::{Encoder, EncoderPreference, choose_encoder};
use super::*;
use crate::wire::payloads::VideoParams;

/// Generous: the machine may be busy with other builds.
const FRAMES_TIMEOUT: Duration = Duration::from_secs(30);
const LOCALHOST: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
const KEY: [u8; 30] = [
    0x14, 0x9f, 0xfe, 0xd4, 0x91, 0xd4, 0x42, 0x12, 0xd2, 0x67, 0x2d, 0xae, 0x63, 0x89, 0x77, 0x9a, 0x91, 0x9e, 0x58,
    0xf9, 0xd9, 0x57, 0x16, 0xab, 0x76, 0xed, 0xad, 0xfb, 0x00, 0xb6,
];

fn pipeline_lock() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

fn wrong_key() -> SrtpKey {
    let mut k = KEY;
    k[0] ^= 0x01;
    SrtpKey(k)
}

fn sender_params(port: u16, ssrc: u32, width: u32, height: u32, fps: u32) -> SenderParams {
    SenderParams {
        host: LOCALHOST,
        port,
        ssrc,
        srtp_key: SrtpKey(KEY),
        video: VideoParams { width, height, fps, kbps: 500 },
        encoder: EncoderPreference::Auto,
        source: VideoSource::Test,
    }
}

fn receiver(ssrc: u32, key: SrtpKey) -> Receiver {
    Receiver::start(ReceiverParams::new(SocketAddr::new(LOCALHOST, 0), ssrc, key)).expect("receiver starts")
}

/// Names of this process's threads that start with `prefix` (GStreamer names its
/// streaming threads `element:pad`, and helper threads inherit their creator's name).
fn threads_named(prefix: &str) -> Vec<String> {
    let mut out = Vec::new();
    if let Ok(dir) = std::fs::read_dir("/proc/self/task") {
        for t in dir.flatten() {
            if let Ok(comm) = std::fs::read_to_string(t.path().join("comm")) {
                let comm = comm.trim_end();
                if comm.starts_with(prefix) {
                    out.push(comm.to_string());
                }
            }
        }
    }
    out
}

/// Threads named `prefix*` once GLib's pool of idle threads has been emptied.
///
/// GStreamer runs its streaming tasks on a shared GLib thread pool that keeps a
/// couple of idle threads for reuse, still carrying the name of their last task.
/// Those are not leaks, so they are stopped first; whatever still carries the
/// prefix after that (encoder or decoder workers, a bus thread) is a real leak.
fn leaked_threads(prefix: &str) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        // SAFETY: a plain GLib call without arguments; it only stops idle pool threads.
        unsafe { gst::glib::ffi::g_thread_pool_stop_unused_threads() };
        let left = threads_named(prefix);
        if left.is_empty() || Instant::now() > deadline {
            return left;
        }
        // A task thread returns to the pool just after its join completes.
        std::thread::sleep(Duration::from_millis(50));
    }
}

// ---- encoder choice ----------------------------------------------------------

#[test]
fn auto_prefers_hardware_then_x264_then_openh264() {
    let all = |_: &str| true;
    assert_eq!(choose_encoder(EncoderPreference::Auto, all).unwrap(), Encoder::V4l2);
    let no_hw = |e: &str| e != "v4l2h264enc";
    assert_eq!(choose_encoder(EncoderPreference::Auto, no_hw).unwrap(), Encoder::X264);
    let only_openh264 = |e: &str| e == "openh264enc";
    assert_eq!(choose_encoder(EncoderPreference::Auto, only_openh264).unwrap(), Encoder::OpenH264);
    let none = |_: &str| false;
    assert!(matches!(choose_encoder(EncoderPreference::Auto, none), Err(VideoError::NoEncoder)));
}

#[test]
fn forced_encoder_is_used_or_named_with_its_package() {
    let all = |_: &str| true;
    let forced = EncoderPreference::Force(Encoder::OpenH264);
    assert_eq!(choose_encoder(forced, all).unwrap(), Encoder::OpenH264);
    let no_x264 = |e: &str| e != "x264enc";
    let err = choose_encoder(EncoderPreference::Force(Encoder::X264), no_x264).unwrap_err();
    assert!(matches!(err, VideoError::MissingElement { element: "x264enc", .. }));
    assert!(err.to_string().contains("gstreamer1.0-plugins-ugly"), "{err}");
}

#[test]
fn encoder_preference_parses_config_values() {
    assert_eq!("auto".parse::<EncoderPreference>().unwrap(), EncoderPreference::Auto);
    assert_eq!("x264enc".parse::<EncoderPreference>().unwrap(), EncoderPreference::Force(Encoder::X264));
    assert_eq!("v4l2h264enc".parse::<EncoderPreference>().unwrap(), EncoderPreference::Force(Encoder::V4l2));
    assert_eq!("openh264enc".parse::<EncoderPreference>().unwrap(), EncoderPreference::Force(Encoder::OpenH264));
    assert!("vaapih264enc".parse::<EncoderPreference>().is_err());
}

#[test]
fn keyframes_come_at_least_every_two_seconds() {
    assert_eq!(encoder::keyframe_interval(30), 60);
    assert_eq!(encoder::keyframe_interval(15), 30);
    assert_eq!(encoder::keyframe_interval(0), 2);
}

#[test]
fn this_machine_has_an_encoder() {
    // CI installs gstreamer1.0-plugins-ugly; without it every call would fail.
    let enc = encoder::available_encoder(EncoderPreference::Auto).expect("an H.264 encoder");
    assert!(Encoder::AUTO_ORDER.contains(&enc));
}

#[test]
fn the_helpers_encoder_descriptions_build_and_set_the_rate() {
    // v4l2h264enc exists only on a Pi: its description is checked as text,
    // with the controls the v1 sender gives it.
    let v4l2 = Encoder::V4l2.launch_description("enc", 800, 15);
    assert!(v4l2.starts_with("v4l2h264enc name=enc extra-controls=\""), "{v4l2}");
    for c in ["video_bitrate=(int)800000", "h264_i_frame_period=(int)30", "repeat_sequence_header=(int)1"] {
        assert!(v4l2.contains(c), "{c} in {v4l2}");
    }
    assert!(v4l2.ends_with("! video/x-h264,level=(string)4"), "{v4l2}");
    super::ensure_init().unwrap();
    for (enc, prop, want) in [(Encoder::X264, "bitrate", 800u32), (Encoder::OpenH264, "bitrate", 800_000)] {
        if !super::has_element(enc.element_name()) {
            continue;
        }
        let desc = format!("videotestsrc num-buffers=1 ! {} ! fakesink", enc.launch_description("enc", 800, 15));
        let p = gst::parse::launch(&desc).unwrap().downcast::<gst::Pipeline>().unwrap();
        let el = p.by_name("enc").unwrap();
        assert_eq!(el.property::<u32>(prop), want, "{desc}");
        enc.set_bitrate(&el, 300, 15);
        assert_eq!(el.property::<u32>(prop), want * 3 / 8, "{enc} after set_bitrate");
    }
}

// ---- capture choice ----------------------------------------------------------

fn fmt(fourcc: &str, compressed: bool, sizes: &[(u32, u32, &[u32])]) -> CameraFormat {
    CameraFormat {
        fourcc: fourcc.into(),
        description: fourcc.into(),
        compressed,
        sizes: sizes
            .iter()
            .map(|(w, h, rates)| FrameSize {
                width: *w,
                height: *h,
                rates: rates.iter().map(|r| FrameRate { num: *r, den: 1 }).collect(),
            })
            .collect(),
    }
}

fn webcam() -> Vec<CameraFormat> {
    vec![
        fmt("YUYV", false, &[(640, 480, &[30, 15]), (1280, 720, &[10]), (1920, 1080, &[5])]),
        fmt("MJPG", true, &[(640, 480, &[30]), (1280, 720, &[30]), (1920, 1080, &[30])]),
    ]
}

#[test]
fn native_h264_is_passed_through_within_the_request() {
    let mut formats = webcam();
    formats.push(fmt("H264", true, &[(640, 480, &[30]), (1280, 720, &[30]), (1920, 1080, &[30])]));
    let m = choose_capture(&formats, 1280, 720, 30).unwrap();
    assert_eq!((m.kind, m.width, m.height, m.rate.num), (CaptureKind::H264, 1280, 720, 30));
    // Only larger H.264 sizes than asked: not usable as is, fall back to MJPEG.
    let big_h264 = vec![fmt("H264", true, &[(1920, 1080, &[30])]), webcam()[1].clone()];
    let m = choose_capture(&big_h264, 1280, 720, 30).unwrap();
    assert_eq!((m.kind, m.width, m.height), (CaptureKind::Mjpeg, 1280, 720));
}

#[test]
fn mjpeg_is_preferred_over_raw_when_raw_is_too_slow() {
    let m = choose_capture(&webcam(), 1280, 720, 30).unwrap();
    assert_eq!((m.kind, m.fourcc.as_str(), m.width, m.height), (CaptureKind::Mjpeg, "MJPG", 1280, 720));
}

#[test]
fn smallest_covering_size_is_chosen_for_scaling() {
    let m = choose_capture(&webcam(), 320, 240, 15).unwrap();
    assert_eq!((m.width, m.height), (640, 480));
    assert_eq!(m.kind, CaptureKind::Mjpeg);
    let raw_only = vec![webcam()[0].clone()];
    let m = choose_capture(&raw_only, 320, 240, 15).unwrap();
    assert_eq!((m.kind, m.width, m.height, m.rate.num), (CaptureKind::Raw, 640, 480, 15));
}

#[test]
fn best_effort_when_nothing_covers_the_request() {
    let small = vec![fmt("YUYV", false, &[(320, 240, &[30]), (640, 480, &[15])])];
    let m = choose_capture(&small, 1280, 720, 30).unwrap();
    assert_eq!((m.width, m.height, m.rate.num), (640, 480, 15));
    let unusable = vec![fmt("HEVC", true, &[(1280, 720, &[30])])];
    assert_eq!(choose_capture(&unusable, 1280, 720, 30), None);
}

#[test]
fn cameras_are_listed_readably() {
    let cams = vec![CameraInfo {
        path: "/dev/video0".into(),
        card: "USB Camera".into(),
        driver: "uvcvideo".into(),
        bus: "usb-1".into(),
        formats: webcam(),
    }];
    let text = format_cameras(&cams);
    assert!(text.contains("/dev/video0: USB Camera"), "{text}");
    assert!(text.contains("MJPG (MJPG): MJPEG, decoded and re-encoded"), "{text}");
    assert!(text.contains("1280x720 @ 30 fps"), "{text}");
    assert!(text.contains("would capture MJPG 1280x720 @ 30 fps"), "{text}");
    assert!(format_cameras(&[]).contains("video.device = \"test\""));
    // Discovery on this machine (usually no camera) must not fail or panic.
    let _ = camera::list_cameras();
}

#[test]
fn parameters_out_of_range_are_rejected_before_starting() {
    let mut p = sender_params(9, 1, 321, 240, 30);
    assert!(matches!(VideoSender::start(p.clone()), Err(VideoError::InvalidParams(_))));
    p.video.width = 320;
    p.video.kbps = 5;
    let err = VideoSender::start(p).err().expect("kbps 5 is rejected");
    assert!(err.to_string().contains("kbps"), "{err}");
}

#[test]
fn srtp_key_is_never_printed() {
    let p = sender_params(9, 1, 320, 240, 30);
    let text = format!("{p:?}");
    assert!(!text.contains("149") && !text.contains("20, 159"), "{text}");
    assert!(text.contains("SrtpKey(..)"));
}

// ---- pipelines -----------------------------------------------------------------

#[test]
fn right_key_decodes_frames_and_wrong_key_decodes_none() {
    let _g = pipeline_lock();
    let dir = tempfile::tempdir().unwrap();
    let record = dir.path().join("call.mkv");
    let png = dir.path().join("frame.png");
    let mut params = ReceiverParams::new(SocketAddr::new(LOCALHOST, 0), 12345, SrtpKey(KEY));
    params.record = Some(record.clone());
    params.snapshot = Some(png.clone());
    let right = Receiver::start(params).expect("receiver starts");
    let wrong = receiver(12345, wrong_key());
    let other_ssrc = receiver(54321, SrtpKey(KEY));
    assert_ne!(right.port(), 0);

    let sender = VideoSender::start(sender_params(right.port(), 12345, 320, 240, 30)).unwrap();
    sender.add_destination("127.0.0.1", wrong.port());
    sender.add_destination("127.0.0.1", other_ssrc.port());

    // The positive control: the same packets decode with the right key.
    assert!(right.wait_frames(60, FRAMES_TIMEOUT), "only {} frames", right.frames());
    assert_eq!(right.frame_size(), Some((320, 240)));
    // The others have had those same packets (and ~2 s more) and decoded nothing.
    let more = right.frames() + 60;
    assert!(right.wait_frames(more, FRAMES_TIMEOUT));
    assert_eq!(wrong.frames(), 0, "a wrong key must decode nothing");
    assert_eq!(other_ssrc.frames(), 0, "another SSRC must decode nothing");
    assert!(right.wait_snapshot(FRAMES_TIMEOUT).unwrap(), "snapshot written");
    assert_eq!(sender.failure(), None);

    sender.stop().unwrap();
    right.stop().unwrap();
    wrong.stop().unwrap();
    other_ssrc.stop().unwrap();

    let decoder = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(&png).unwrap()));
    let info = decoder.read_info().unwrap();
    assert_eq!((info.info().width, info.info().height), (320, 240));
    let mkv = std::fs::read(&record).unwrap();
    assert!(mkv.len() > 10_000, "recording has {} bytes", mkv.len());
    assert_eq!(&mkv[..4], &[0x1a, 0x45, 0xdf, 0xa3], "Matroska (EBML) header");
    // Finalised on EOS: the Cues element (seek index) is written at the end.
    assert!(mkv.windows(4).any(|w| w == [0x1c, 0x53, 0xbb, 0x6b]), "Cues present");
}

#[test]
fn a_limited_recording_is_finished_while_the_call_goes_on() {
    let _g = pipeline_lock();
    let dir = tempfile::tempdir().unwrap();
    let record = dir.path().join("short.mkv");
    let mut params = ReceiverParams::new(SocketAddr::new(LOCALHOST, 0), 4242, SrtpKey(KEY));
    params.record = Some(record.clone());
    params.record_for = Some(Duration::from_secs(1));
    let rx = Receiver::start(params).expect("receiver starts");
    let sender = VideoSender::start(sender_params(rx.port(), 4242, 320, 240, 30)).unwrap();
    let cues = |b: &[u8]| b.windows(4).any(|w| w == [0x1c, 0x53, 0xbb, 0x6b]);
    // Finalised (Cues written at end of stream, and the file flushed: its
    // size stays put) without stopping the receiver.
    let size = || std::fs::metadata(&record).map(|m| m.len()).unwrap_or(0);
    let end = Instant::now() + FRAMES_TIMEOUT;
    let mut last = (0, Instant::now());
    while Instant::now() < end {
        let now = size();
        if now != last.0 {
            last = (now, Instant::now());
        } else if last.1.elapsed() > Duration::from_millis(500) && std::fs::read(&record).is_ok_and(|b| cues(&b)) {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(std::fs::read(&record).is_ok_and(|b| cues(&b)), "recording not finished within {FRAMES_TIMEOUT:?}");
    let finished = size();
    assert!(finished > 5_000, "recording has {finished} bytes");
    // Decoding goes on, and the file no longer grows.
    let more = rx.frames() + 30;
    assert!(rx.wait_frames(more, FRAMES_TIMEOUT), "decoding stopped with the recording: {:?}", rx.failed().borrow());
    assert_eq!(rx.failed().borrow().clone(), None);
    assert_eq!(size(), finished, "the file grew after its end");
    sender.stop().unwrap();
    rx.stop().unwrap();
    assert_eq!(size(), finished, "stop rewrote the finished file");
}

#[test]
fn bitrate_changes_without_interrupting_frames() {
    let _g = pipeline_lock();
    let rx = receiver(777, SrtpKey(KEY));
    let sender = VideoSender::start(sender_params(rx.port(), 777, 320, 240, 30)).unwrap();
    assert!(rx.wait_frames(30, FRAMES_TIMEOUT), "only {} frames", rx.frames());
    let before = sender.current();
    let after = sender.set_bitrate(150).unwrap();
    assert_eq!(after, VideoSettings { video: VideoParams { kbps: 150, ..before.video }, ..before });
    assert_eq!(sender.current().video.kbps, 150);
    let n = rx.frames();
    assert!(rx.wait_frames(n + 60, FRAMES_TIMEOUT), "frames stopped at {}", rx.frames());
    assert!(matches!(sender.set_bitrate(1), Err(VideoError::InvalidParams(_))));
    assert_eq!(sender.failure(), None);
    sender.stop().unwrap();
    rx.stop().unwrap();
}

#[test]
fn format_change_renegotiates_the_decoded_size() {
    let _g = pipeline_lock();
    let rx = receiver(4242, SrtpKey(KEY));
    let sender = VideoSender::start(sender_params(rx.port(), 4242, 320, 240, 30)).unwrap();
    assert!(rx.wait_frame_size(320, 240, FRAMES_TIMEOUT), "first size: {:?}", rx.frame_size());
    let s = sender.set_format(176, 144, 15).unwrap();
    assert_eq!((s.video.width, s.video.height, s.video.fps), (176, 144, 15));
    assert!(rx.wait_frame_size(176, 144, FRAMES_TIMEOUT), "size now {:?}", rx.frame_size());
    let n = rx.frames();
    assert!(rx.wait_frames(n + 15, FRAMES_TIMEOUT), "frames flow after the change");
    assert!(matches!(sender.set_format(0, 144, 15), Err(VideoError::InvalidParams(_))));
    assert_eq!(sender.current().video.width, 176);
    sender.stop().unwrap();
    rx.stop().unwrap();
}

#[test]
fn stop_leaves_no_threads_pipelines_or_sockets() {
    let _g = pipeline_lock();
    let rx = receiver(99, SrtpKey(KEY));
    let sender = VideoSender::start(sender_params(rx.port(), 99, 320, 240, 30)).unwrap();
    assert!(rx.wait_frames(30, FRAMES_TIMEOUT));
    let (sp, rp) = (sender.name_prefix(), rx.name_prefix());
    let (sw, rw) = (sender.pipeline_weak(), rx.pipeline_weak());
    let port = rx.port();
    assert!(!threads_named(&format!("{sp}-")).is_empty(), "sender threads are named {sp}-*");
    assert!(!threads_named(&format!("{rp}-")).is_empty(), "receiver threads are named {rp}-*");

    let t = Instant::now();
    sender.stop().unwrap();
    rx.stop().unwrap();
    assert!(t.elapsed() < STOP_TIMEOUT, "stop took {:?}", t.elapsed());

    assert!(sw.upgrade().is_none(), "sender pipeline freed");
    assert!(rw.upgrade().is_none(), "receiver pipeline freed");
    assert_eq!(leaked_threads(&format!("{sp}-")), Vec::<String>::new(), "sender threads gone");
    assert_eq!(leaked_threads(&format!("{rp}-")), Vec::<String>::new(), "receiver threads gone");
    UdpSocket::bind(SocketAddr::new(LOCALHOST, port)).expect("receiver port is free again");
}

#[test]
fn late_receiver_decodes_within_a_keyframe_interval() {
    // SPS/PPS travel with every IDR and an IDR comes at least every 2 s, so a
    // receiver that joins a running stream starts decoding within about 2 s.
    let _g = pipeline_lock();
    let port = UdpSocket::bind(SocketAddr::new(LOCALHOST, 0)).unwrap().local_addr().unwrap().port();
    let sender = VideoSender::start(sender_params(port, 2024, 320, 240, 30)).unwrap();
    std::thread::sleep(Duration::from_millis(2500)); // the stream is well past its first IDR
    let rx = Receiver::start(ReceiverParams::new(SocketAddr::new(LOCALHOST, port), 2024, SrtpKey(KEY)))
        .expect("port still free");
    let t = Instant::now();
    assert!(rx.wait_frames(1, FRAMES_TIMEOUT), "a late receiver never decoded");
    // 2 s keyframe interval plus jitter buffer and a busy machine's scheduling.
    assert!(t.elapsed() < Duration::from_secs(8), "first frame after {:?}", t.elapsed());
    sender.stop().unwrap();
    rx.stop().unwrap();
}

/// NAL unit types in one H.264 access unit, byte-stream (start codes) or avc
/// (4-byte lengths).
fn nal_types(data: &[u8], avc: bool) -> Vec<u8> {
    let mut types = Vec::new();
    if avc {
        let mut i = 0;
        while i + 4 < data.len() {
            let len = u32::from_be_bytes([data[i], data[i + 1], data[i + 2], data[i + 3]]) as usize;
            types.push(data[i + 4] & 0x1f);
            i += 4 + len;
        }
    } else {
        for i in 0..data.len().saturating_sub(3) {
            if data[i..i + 3] == [0, 0, 1] {
                types.push(data[i + 3] & 0x1f);
            }
        }
    }
    types
}

#[test]
fn every_idr_carries_sps_pps_and_comes_within_two_seconds() {
    let _g = pipeline_lock();
    let rx = receiver(8080, SrtpKey(KEY));
    let sender = VideoSender::start(sender_params(rx.port(), 8080, 320, 240, 30)).unwrap();
    let pipeline = sender.pipeline_weak().upgrade().unwrap();
    let pad = pipeline.by_name(&format!("{}-parse", sender.name_prefix())).unwrap().static_pad("src").unwrap();
    drop(pipeline);
    // (pts, NAL types) of every keyframe leaving h264parse for the payloader.
    let keyframes = std::sync::Arc::new(Mutex::new(Vec::<(gst::ClockTime, Vec<u8>)>::new()));
    let seen = keyframes.clone();
    let probe = pad
        .add_probe(gst::PadProbeType::BUFFER, move |pad, info| {
            if let Some(buf) = info.buffer() {
                if !buf.flags().contains(gst::BufferFlags::DELTA_UNIT) {
                    let avc = pad
                        .current_caps()
                        .and_then(|c| c.structure(0).and_then(|s| s.get::<String>("stream-format").ok()))
                        .is_some_and(|f| f == "avc");
                    let map = buf.map_readable().unwrap();
                    let pts = buf.pts().unwrap_or(gst::ClockTime::ZERO);
                    seen.lock().unwrap().push((pts, nal_types(map.as_slice(), avc)));
                }
            }
            gst::PadProbeReturn::Ok
        })
        .unwrap();
    // 5 s of video at 30 fps.
    assert!(rx.wait_frames(150, FRAMES_TIMEOUT), "only {} frames", rx.frames());
    pad.remove_probe(probe);
    let keys = keyframes.lock().unwrap().clone();
    assert!(keys.len() >= 2, "keyframes: {keys:?}");
    for (pts, types) in &keys {
        for t in [7, 8, 5] {
            assert!(types.contains(&t), "keyframe at {pts} lacks NAL type {t}: {types:?}");
        }
    }
    for pair in keys.windows(2) {
        let gap = pair[1].0.saturating_sub(pair[0].0);
        assert!(gap <= gst::ClockTime::from_mseconds(2050), "keyframes {gap} apart");
    }
    sender.stop().unwrap();
    rx.stop().unwrap();
}

#[test]
fn media_handles_can_move_between_threads() {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<VideoSender>();
    send_sync::<AudioSender>();
    send_sync::<Receiver>();
    send_sync::<AudioReceiver>();
}

#[test]
fn pipeline_errors_are_reported_as_failures() {
    let _g = pipeline_lock();
    let sender = VideoSender::start(sender_params(9, 1, 160, 120, 15)).unwrap();
    let mut failed = sender.failed();
    assert_eq!(*failed.borrow(), None);
    // What a camera unplugged mid-call looks like from the bus.
    let pipeline = sender.pipeline_weak().upgrade().unwrap();
    let msg = gst::message::Error::builder(gst::ResourceError::Read, "camera gone").src(&pipeline).build();
    pipeline.post_message(msg).unwrap();
    drop(pipeline);
    let rt = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
    rt.block_on(async {
        tokio::time::timeout(Duration::from_secs(10), failed.wait_for(|f| f.is_some()))
            .await
            .expect("failure reported in time")
            .expect("sender alive");
    });
    let why = sender.failure().unwrap();
    assert!(why.contains("camera gone"), "{why}");
    sender.stop().unwrap();
}

#[test]
fn start_failures_explain_themselves() {
    let _g = pipeline_lock();
    // A port that is taken.
    let taken = UdpSocket::bind(SocketAddr::new(LOCALHOST, 0)).unwrap();
    let addr = taken.local_addr().unwrap();
    let err = Receiver::start(ReceiverParams::new(addr, 1, SrtpKey(KEY))).err().expect("bind fails");
    assert!(matches!(err, VideoError::Start { .. }), "{err}");
    // A camera that is not there.
    let mut p = sender_params(9, 1, 320, 240, 30);
    p.source = VideoSource::Device("/dev/video-robotd-missing".into());
    let err = VideoSender::start(p).err().expect("no such camera");
    assert!(matches!(err, VideoError::Camera { .. }), "{err}");
    assert!(err.to_string().contains("video group"), "{err}");
    // A forced encoder that is not installed.
    ensure_init().unwrap();
    if !has_element("v4l2h264enc") {
        let mut p = sender_params(9, 1, 320, 240, 30);
        p.encoder = EncoderPreference::Force(Encoder::V4l2);
        let err = VideoSender::start(p).err().expect("no hardware encoder here");
        assert!(matches!(err, VideoError::MissingElement { element: "v4l2h264enc", .. }), "{err}");
    }
}

#[test]
fn openh264_encoder_works_when_forced() {
    let _g = pipeline_lock();
    ensure_init().unwrap();
    if !has_element("openh264enc") {
        eprintln!("openh264enc not installed; skipping");
        return;
    }
    let rx = receiver(31337, SrtpKey(KEY));
    let mut p = sender_params(rx.port(), 31337, 320, 240, 30);
    p.encoder = EncoderPreference::Force(Encoder::OpenH264);
    let sender = VideoSender::start(p).unwrap();
    assert_eq!(sender.current().encoder, Some(Encoder::OpenH264));
    assert!(rx.wait_frames(30, FRAMES_TIMEOUT), "only {} frames", rx.frames());
    sender.set_bitrate(300).unwrap();
    let n = rx.frames();
    assert!(rx.wait_frames(n + 30, FRAMES_TIMEOUT));
    sender.stop().unwrap();
    rx.stop().unwrap();
}

#[test]
fn audio_is_sent_as_srtp_opus() {
    let _g = pipeline_lock();
    let rx = AudioReceiver::start(AudioReceiverParams {
        bind: SocketAddr::new(LOCALHOST, 0),
        ssrc: 23456,
        srtp_key: SrtpKey(KEY),
    })
    .unwrap();
    let wrong = AudioReceiver::start(AudioReceiverParams {
        bind: SocketAddr::new(LOCALHOST, 0),
        ssrc: 23456,
        srtp_key: wrong_key(),
    })
    .unwrap();
    let sender = AudioSender::start(AudioParams {
        host: LOCALHOST,
        port: rx.port(),
        ssrc: 23456,
        srtp_key: SrtpKey(KEY),
        bitrate: 32_000,
        source: AudioSource::Test,
    })
    .unwrap();
    sender.add_destination("127.0.0.1", wrong.port());
    // 50 Opus packets of 20 ms: one second of sound, then one more.
    assert!(rx.wait_packets(50, FRAMES_TIMEOUT), "only {} packets", rx.packets());
    assert!(rx.wait_packets(100, FRAMES_TIMEOUT), "only {} packets", rx.packets());
    assert_eq!(wrong.packets(), 0, "a wrong key must decode nothing");
    assert_eq!(*sender.failed().borrow(), None);
    sender.stop().unwrap();
    rx.stop().unwrap();
    wrong.stop().unwrap();
}

/// robotd answers a version 1 call's `video` command from its mirror of the
/// helper's sender, with the sender's own rules and messages.
#[test]
fn the_settings_mirror_checks_video_commands_as_the_sender_does() {
    use crate::wire::payloads::VideoChange;
    let v = VideoParams { width: 640, height: 360, fps: 15, kbps: 500 };
    let mut m = VideoSettingsMirror { video: v, reencodes: true };
    assert_eq!(m.apply(VideoChange::Bitrate(300)).unwrap(), VideoParams { kbps: 300, ..v });
    assert!(matches!(m.apply(VideoChange::Bitrate(10)), Err(VideoError::InvalidParams(_))));
    let f = VideoChange::Format { width: 320, height: 240, fps: 10 };
    assert_eq!(m.apply(f).unwrap(), VideoParams { width: 320, height: 240, fps: 10, kbps: 300 });
    assert!(matches!(
        m.apply(VideoChange::Format { width: 321, height: 240, fps: 10 }),
        Err(VideoError::InvalidParams(_))
    ));
    // A native H.264 camera: the bitrate is recorded, the format cannot change.
    let mut pass = VideoSettingsMirror { video: v, reencodes: false };
    assert_eq!(pass.apply(VideoChange::Bitrate(400)).unwrap().kbps, 400);
    let e = pass.apply(f).unwrap_err();
    assert!(matches!(e, VideoError::Unsupported(_)) && e.to_string().contains("sends H.264 itself"), "{e}");
    assert_eq!(pass.video, VideoParams { kbps: 400, ..v });
}
