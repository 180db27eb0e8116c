//! A TCP proxy for fault injection between robotd and the broker (loopback
//! only). It runs on its own thread and tokio runtime, so it keeps working
//! while a test blocks, and can:
//! - pass bytes through ([`Proxy::pass`]),
//! - delay every chunk by a fixed time ([`Proxy::delay`]),
//! - black-hole the connection ([`Proxy::black_hole`]): stop forwarding in
//!   both directions but keep every socket open, as a network partition
//!   does. Bytes sent meanwhile wait in the proxy and the kernel buffers, the
//!   way TCP retransmissions wait in a real network; when the mode goes back
//!   to pass, they are delivered (late), unless an endpoint gave up first,
//! - cut the current connections (close both sides: FIN) ([`Proxy::cut`]),
//! - reset them (RST, via `SO_LINGER` 0) ([`Proxy::reset`]).
//!
//! New connections are accepted in every mode and follow the current mode.
//! Loaded with `#[path = "common/proxy.rs"] mod proxy;` next to `mod common;`.
#![allow(dead_code)]

use std::collections::VecDeque;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{oneshot, watch};
use tokio::time::Instant;

/// What the proxy does with bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Pass,
    /// Every chunk is forwarded this long after it was read.
    Delay(Duration),
    /// Nothing is read or forwarded; sockets stay open.
    BlackHole,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kill {
    Close,
    Reset,
}

struct Ctl {
    mode: watch::Sender<Mode>,
    conns: Mutex<Vec<oneshot::Sender<Kill>>>,
    accepted: AtomicU64,
    /// Bytes forwarded, client to upstream and back.
    up_bytes: AtomicU64,
    down_bytes: AtomicU64,
}

/// A proxy from `127.0.0.1:port` to `127.0.0.1:upstream`; stops on drop.
pub struct Proxy {
    pub port: u16,
    ctl: Arc<Ctl>,
    stop: Option<oneshot::Sender<()>>,
}

impl Proxy {
    pub fn start(upstream: u16) -> Proxy {
        let std_listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        std_listener.set_nonblocking(true).unwrap();
        let port = std_listener.local_addr().unwrap().port();
        let (mode, _) = watch::channel(Mode::Pass);
        let ctl = Arc::new(Ctl {
            mode,
            conns: Mutex::new(Vec::new()),
            accepted: AtomicU64::new(0),
            up_bytes: AtomicU64::new(0),
            down_bytes: AtomicU64::new(0),
        });
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let c = ctl.clone();
        std::thread::Builder::new()
            .name(format!("proxy-{port}"))
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
                rt.block_on(async move {
                    let listener = TcpListener::from_std(std_listener).unwrap();
                    tokio::select! {
                        _ = stop_rx => {}
                        _ = accept_loop(listener, upstream, c) => {}
                    }
                });
                // Dropping the runtime drops every connection task and socket.
            })
            .unwrap();
        Proxy { port, ctl, stop: Some(stop_tx) }
    }

    pub fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
    }

    pub fn mode(&self) -> Mode {
        *self.ctl.mode.borrow()
    }

    pub fn pass(&self) {
        self.ctl.mode.send_replace(Mode::Pass);
    }

    pub fn delay(&self, d: Duration) {
        self.ctl.mode.send_replace(Mode::Delay(d));
    }

    pub fn black_hole(&self) {
        self.ctl.mode.send_replace(Mode::BlackHole);
    }

    /// Close both sides of every current connection (FIN). Returns how many.
    pub fn cut(&self) -> usize {
        self.kill(Kill::Close)
    }

    /// Reset both sides of every current connection (RST). Returns how many.
    pub fn reset(&self) -> usize {
        self.kill(Kill::Reset)
    }

    fn kill(&self, k: Kill) -> usize {
        let conns: Vec<_> = self.ctl.conns.lock().unwrap().drain(..).collect();
        conns.into_iter().filter_map(|tx| tx.send(k).ok()).count()
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> u64 {
        self.ctl.accepted.load(Ordering::Relaxed)
    }

    /// Bytes forwarded (client to upstream, upstream to client).
    pub fn bytes(&self) -> (u64, u64) {
        (self.ctl.up_bytes.load(Ordering::Relaxed), self.ctl.down_bytes.load(Ordering::Relaxed))
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

async fn accept_loop(listener: TcpListener, upstream: u16, ctl: Arc<Ctl>) {
    loop {
        let Ok((client, _)) = listener.accept().await else { continue };
        ctl.accepted.fetch_add(1, Ordering::Relaxed);
        let (kill_tx, kill_rx) = oneshot::channel();
        ctl.conns.lock().unwrap().retain(|tx| !tx.is_closed());
        ctl.conns.lock().unwrap().push(kill_tx);
        tokio::spawn(connection(client, upstream, ctl.clone(), kill_rx));
    }
}

fn set_linger_zero(fd: i32) {
    let l = libc::linger { l_onoff: 1, l_linger: 0 };
    // SAFETY: a valid socket fd and a correctly sized linger struct.
    unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            &l as *const libc::linger as *const libc::c_void,
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
}

async fn connection(mut client: TcpStream, upstream: u16, ctl: Arc<Ctl>, kill: oneshot::Receiver<Kill>) {
    // Upstream refused (broker down): closing the client is what a dead
    // broker behind a live network looks like.
    let Ok(mut server) = TcpStream::connect(("127.0.0.1", upstream)).await else { return };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (cfd, sfd) = (client.as_raw_fd(), server.as_raw_fd());
    let killed = {
        let (cr, cw) = client.split();
        let (sr, sw) = server.split();
        let up = pump(cr, sw, ctl.mode.subscribe(), &ctl.up_bytes);
        let down = pump(sr, cw, ctl.mode.subscribe(), &ctl.down_bytes);
        tokio::select! {
            _ = async { tokio::join!(up, down) } => None,
            k = kill => k.ok(),
        }
    };
    if killed == Some(Kill::Reset) {
        set_linger_zero(cfd);
        set_linger_zero(sfd);
    }
    // Dropping the streams closes both fds: FIN, or RST after SO_LINGER 0.
    drop(client);
    drop(server);
}

/// Forward one direction, following the mode; on EOF, pass the FIN on.
async fn pump(
    mut r: tokio::net::tcp::ReadHalf<'_>,
    mut w: tokio::net::tcp::WriteHalf<'_>,
    mut mode: watch::Receiver<Mode>,
    counter: &AtomicU64,
) {
    let mut queue: VecDeque<(Instant, Vec<u8>)> = VecDeque::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut eof = false;
    loop {
        let m = *mode.borrow_and_update();
        let delay = match m {
            Mode::Delay(d) => d,
            _ => Duration::ZERO,
        };
        let flowing = m != Mode::BlackHole;
        let due = queue.front().map(|(t, _)| *t + delay);
        if eof && queue.is_empty() {
            let _ = w.shutdown().await;
            return;
        }
        tokio::select! {
            n = r.read(&mut buf), if flowing && !eof && queue.len() < 256 => match n {
                Ok(0) | Err(_) => eof = true,
                Ok(n) => queue.push_back((Instant::now(), buf[..n].to_vec())),
            },
            _ = tokio::time::sleep_until(due.unwrap_or_else(Instant::now)), if flowing && due.is_some() => {
                let (_, chunk) = queue.pop_front().expect("due implies a chunk");
                if w.write_all(&chunk).await.is_err() {
                    return;
                }
                counter.fetch_add(chunk.len() as u64, Ordering::Relaxed);
            }
            r = mode.changed() => if r.is_err() { return },
        }
    }
}
