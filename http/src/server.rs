//! The server side: serving one request, and protecting a server from slow and greedy clients.
//!
//! Protection, for every TCP server (the agent, `keelctl manager serve`) and, in part, the Unix
//! socket ones:
//!
//! - [`Guarded`] wraps the socket under TLS: one deadline per connection covers the TLS handshake
//!   and the request head (each read gets the time left as its socket timeout, so a client that
//!   trickles a byte at a time cannot stretch it); after the head, a body must keep up a minimum
//!   average rate over a window (an upload at less than 1 KiB/s over 30 s is cut), and no read
//!   or write waits longer than the I/O timeout.
//! - [`Pool`] hands out connection [`Slot`]s. A new connection first takes a *pending* slot
//!   (handshake and head not done, peer unknown). When the pending slots are full, or the peer
//!   address already holds its share of them, the oldest pending connection (of that peer
//!   first) is closed to make room: a crowd of slow clients can delay a newcomer only by the
//!   time of its own handshake, never shut it out. A connection whose TLS client certificate
//!   verified against the manager CA moves to the separate *authenticated* slots, which
//!   unauthenticated peers never take and never evict.
//! - [`serve_tcp`] is the accept loop: a slot, then a thread; a thread that cannot start drops
//!   its slot with it (no leak).

use crate::head::{read_request_head, RequestHead};
use crate::message::{write_response, Request, Response};
use crate::{HttpError, Limits};
use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::{IpAddr, Shutdown, TcpListener, TcpStream};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

/// Reads one request, body included (within `limits`).
pub fn read_request<S: Read + Write>(
    stream: &mut S,
    limits: &Limits,
) -> Result<Request, HttpError> {
    let head = read_request_head(stream, limits)?;
    head.read_body(stream, limits)
}

/// Writes the error response for `e`, when there is a client to tell; returns `e`.
pub fn answer_error(stream: &mut impl Write, e: HttpError) -> HttpError {
    if let Some(response) = e.response() {
        // The client may be gone already; the read error is what matters.
        let _ = write_response(stream, &response);
    }
    e
}

/// Serves one request on `stream`: reads it, lets `handle` answer it (with the stream at hand,
/// for example to look at the TLS peer), writes the answer, or the error response when the
/// request could not be read. Returns the read error, if any, for the caller to log.
pub fn serve_one<S: Read + Write>(
    stream: &mut S,
    limits: &Limits,
    handle: impl FnOnce(&mut S, &Request) -> Response,
) -> Result<(), HttpError> {
    serve_head(stream, limits, |stream, head| {
        let request = head.read_body(stream, limits)?;
        Ok(handle(stream, &request))
    })
}

/// As [`serve_one`], with the head alone: `handle` may refuse the request before its body is
/// read (and before `100 Continue`), or read the body itself.
pub fn serve_head<S: Read + Write>(
    stream: &mut S,
    limits: &Limits,
    handle: impl FnOnce(&mut S, RequestHead) -> Result<Response, HttpError>,
) -> Result<(), HttpError> {
    let response = read_request_head(stream, limits).and_then(|head| handle(stream, head));
    match response {
        Ok(response) => Ok(write_response(stream, &response)?),
        Err(e) => Err(answer_error(stream, e)),
    }
}

/// Sockets whose reads and writes can be given a timeout.
pub trait Timeouts {
    fn set_read_timeout(&self, timeout: Option<Duration>) -> io::Result<()>;
    fn set_write_timeout(&self, timeout: Option<Duration>) -> io::Result<()>;
}

macro_rules! timeouts {
    ($t:ty) => {
        impl Timeouts for $t {
            fn set_read_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
                <$t>::set_read_timeout(self, timeout)
            }
            fn set_write_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
                <$t>::set_write_timeout(self, timeout)
            }
        }
    };
}
timeouts!(TcpStream);
timeouts!(UnixStream);

/// How a server protects itself from slow clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Protection {
    /// From accept to the end of the request head, TLS handshake included.
    pub head_timeout: Duration,
    /// Longest wait for any one read or write after the head.
    pub io_timeout: Duration,
    /// Least average body rate, in bytes per second over `rate_window`.
    pub min_body_rate: u64,
    pub rate_window: Duration,
}

impl Default for Protection {
    /// 10 s for handshake and head, 10 s per read or write, 1 KiB/s over 30 s.
    fn default() -> Self {
        Self {
            head_timeout: Duration::from_secs(10),
            io_timeout: Duration::from_secs(10),
            min_body_rate: 1024,
            rate_window: Duration::from_secs(30),
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Phase {
    /// Handshake and head: every read within the deadline.
    Head { deadline: Instant },
    /// The body: each window must bring `min_body_rate` bytes per second.
    Body { since: Instant, bytes: u64 },
    /// Anything else (a long-lived response): only the I/O timeout.
    Open,
}

/// A socket under the connection's deadline and rate rules (see the module documentation).
#[derive(Debug)]
pub struct Guarded<S> {
    inner: S,
    protection: Protection,
    phase: Phase,
}

fn timed_out(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, what.to_string())
}

impl<S: Timeouts> Guarded<S> {
    /// Starts the head deadline now.
    pub fn new(inner: S, protection: Protection) -> io::Result<Self> {
        inner.set_write_timeout(Some(protection.io_timeout))?;
        Ok(Self {
            inner,
            phase: Phase::Head {
                deadline: Instant::now() + protection.head_timeout,
            },
            protection,
        })
    }

    /// The head is in: from now on the body rate is watched.
    pub fn start_body(&mut self) {
        self.phase = Phase::Body {
            since: Instant::now(),
            bytes: 0,
        };
    }

    /// No deadline and no rate from now on, only the I/O timeout (a long-lived exchange).
    pub fn open(&mut self) {
        self.phase = Phase::Open;
    }

    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    pub fn into_inner(self) -> S {
        self.inner
    }

    /// The read timeout for the next read, or the error that ends the connection.
    fn next_timeout(&mut self) -> io::Result<Duration> {
        let now = Instant::now();
        let p = self.protection;
        match &mut self.phase {
            Phase::Head { deadline } => {
                let left = deadline.saturating_duration_since(now);
                if left.is_zero() {
                    return Err(timed_out(
                        "the handshake and request head took longer than allowed",
                    ));
                }
                Ok(left)
            }
            Phase::Body { since, bytes } => {
                let elapsed = now.saturating_duration_since(*since);
                if elapsed >= p.rate_window {
                    let window = p.rate_window.as_millis();
                    let want = u128::from(p.min_body_rate).saturating_mul(window) / 1000;
                    if u128::from(*bytes) < want {
                        return Err(timed_out("the body arrives too slowly"));
                    }
                    *since = now;
                    *bytes = 0;
                }
                Ok(p.io_timeout)
            }
            Phase::Open => Ok(p.io_timeout),
        }
    }
}

impl<S: Read + Timeouts> Read for Guarded<S> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let timeout = self.next_timeout()?;
        self.inner.set_read_timeout(Some(timeout))?;
        let n = self.inner.read(buf)?;
        if let Phase::Body { bytes, .. } = &mut self.phase {
            *bytes += n as u64;
        }
        Ok(n)
    }
}

impl<S: Write> Write for Guarded<S> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.inner.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// How many connections a [`Pool`] holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolLimits {
    /// Connections not (yet) authenticated: in handshake or head, or anonymous requests.
    pub pending: usize,
    /// Of those, from one peer address.
    pub per_peer: usize,
    /// Authenticated connections (the manager's), never taken by the others.
    pub authenticated: usize,
}

struct Pending {
    id: u64,
    peer: Option<IpAddr>,
    close: Box<dyn Fn() + Send>,
}

#[derive(Default)]
struct PoolState {
    next_id: u64,
    /// Oldest first.
    pending: VecDeque<Pending>,
    authenticated: usize,
}

/// Connection slots (see the module documentation). Cloning shares the pool.
#[derive(Clone)]
pub struct Pool {
    limits: PoolLimits,
    state: Arc<Mutex<PoolState>>,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("limits", &self.limits)
            .finish()
    }
}

impl Pool {
    pub fn new(limits: PoolLimits) -> Self {
        Self {
            limits,
            state: Arc::default(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, PoolState> {
        // Every change is complete before the lock is released; a panic cannot tear one.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A pending slot for a new connection from `peer`, closing the oldest pending connection
    /// (of `peer` first) with its `close` when there is no room. `close` ends this connection
    /// should it be evicted in turn. `None` only when the pool holds no pending slots at all.
    pub fn admit(&self, peer: Option<IpAddr>, close: Box<dyn Fn() + Send>) -> Option<Slot> {
        if self.limits.pending == 0 || self.limits.per_peer == 0 {
            return None;
        }
        let mut state = self.lock();
        if let Some(peer) = peer {
            let same: Vec<usize> = (0..state.pending.len())
                .filter(|&i| state.pending[i].peer == Some(peer))
                .collect();
            if same.len() >= self.limits.per_peer {
                if let Some(evicted) = same.first().and_then(|&i| state.pending.remove(i)) {
                    (evicted.close)();
                }
            }
        }
        while state.pending.len() >= self.limits.pending {
            match state.pending.pop_front() {
                Some(evicted) => (evicted.close)(),
                None => break,
            }
        }
        Some(self.push(&mut state, peer, close))
    }

    /// A pending slot if one is free; never evicts (for servers that answer 503 instead).
    pub fn try_admit(&self) -> Option<Slot> {
        let mut state = self.lock();
        (state.pending.len() < self.limits.pending)
            .then(|| self.push(&mut state, None, Box::new(|| {})))
    }

    fn push(
        &self,
        state: &mut PoolState,
        peer: Option<IpAddr>,
        close: Box<dyn Fn() + Send>,
    ) -> Slot {
        let id = state.next_id;
        state.next_id += 1;
        state.pending.push_back(Pending { id, peer, close });
        Slot {
            pool: self.clone(),
            id,
            kind: SlotKind::Pending,
        }
    }

    /// (pending, authenticated) connections now.
    pub fn counts(&self) -> (usize, usize) {
        let state = self.lock();
        (state.pending.len(), state.authenticated)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SlotKind {
    Pending,
    Authenticated,
}

/// One connection's place in a [`Pool`], given back when dropped.
#[derive(Debug)]
pub struct Slot {
    pool: Pool,
    id: u64,
    kind: SlotKind,
}

impl Slot {
    /// Moves the connection to the authenticated slots. `false` when they are full or the
    /// connection was evicted meanwhile (it is being closed).
    pub fn authenticate(&mut self) -> bool {
        if self.kind == SlotKind::Authenticated {
            return true;
        }
        let mut state = self.pool.lock();
        if state.authenticated >= self.pool.limits.authenticated {
            return false;
        }
        let Some(at) = state.pending.iter().position(|p| p.id == self.id) else {
            return false;
        };
        state.pending.remove(at);
        state.authenticated += 1;
        self.kind = SlotKind::Authenticated;
        true
    }

    pub fn is_authenticated(&self) -> bool {
        self.kind == SlotKind::Authenticated
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut state = self.pool.lock();
        match self.kind {
            SlotKind::Pending => state.pending.retain(|p| p.id != self.id),
            SlotKind::Authenticated => state.authenticated = state.authenticated.saturating_sub(1),
        }
    }
}

/// Accepts connections on `listener` until `stop` is raised, each with a slot from `pool` and on
/// a thread of its own named `name`, where `serve` runs. A connection without a slot is closed.
pub fn serve_tcp(
    listener: &TcpListener,
    pool: &Pool,
    stop: &AtomicBool,
    name: &str,
    serve: Arc<dyn Fn(TcpStream, Slot) + Send + Sync>,
) {
    for tcp in listener.incoming() {
        if stop.load(Ordering::SeqCst) {
            break;
        }
        let Ok(tcp) = tcp else {
            // Out of descriptors or memory: back off instead of spinning.
            thread::sleep(Duration::from_millis(50));
            continue;
        };
        let (Ok(peer), Ok(handle)) = (tcp.peer_addr(), tcp.try_clone()) else {
            continue;
        };
        let close = Box::new(move || {
            let _ = handle.shutdown(Shutdown::Both);
        });
        let Some(slot) = pool.admit(Some(peer.ip()), close) else {
            continue;
        };
        let serve = Arc::clone(&serve);
        // If the thread cannot start, the closure (and the slot in it) is dropped with the error.
        let _ = thread::Builder::new()
            .name(name.into())
            .spawn(move || serve(tcp, slot));
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::client::read_response;
    use std::io::Cursor;
    use std::net::Ipv4Addr;
    use std::sync::atomic::AtomicUsize;

    /// A stream reading from one buffer and writing to another.
    struct Duplex(Cursor<Vec<u8>>, Vec<u8>);

    impl Read for Duplex {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            self.0.read(buf)
        }
    }

    impl Write for Duplex {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.1.write(buf)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn duplex(raw: &[u8]) -> Duplex {
        Duplex(Cursor::new(raw.to_vec()), vec![])
    }

    /// What the server wrote starts with `start`.
    fn answered(s: &Duplex, start: &str) {
        let text = String::from_utf8_lossy(&s.1);
        assert!(text.starts_with(start), "{text:?}");
    }

    #[test]
    fn serve_one_answers_errors_too() {
        let mut ok = duplex(b"GET /x HTTP/1.1\r\n\r\n");
        serve_one(&mut ok, &Limits::default(), |_, r| {
            Response::json(200, &r.path)
        })
        .unwrap();
        let resp = read_response(&mut Cursor::new(ok.1), &Limits::default()).unwrap();
        assert_eq!(
            (resp.status, resp.body.as_slice()),
            (200, b"\"/x\"".as_slice())
        );

        let mut bad = duplex(b"GET /x HTTP/1.1\r\nbad\r\n\r\n");
        let err = serve_one(&mut bad, &Limits::default(), |_, _| {
            Response::json(200, &"no")
        });
        assert!(matches!(err, Err(HttpError::Malformed(_))));
        let resp = read_response(&mut Cursor::new(bad.1), &Limits::default()).unwrap();
        assert_eq!(resp.status, 400);
    }

    #[test]
    fn continue_is_sent_only_before_a_body_that_is_read() {
        let upload = b"PUT /x HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\nhi";
        // Read: 100 Continue first, then the answer.
        let mut s = duplex(upload);
        serve_one(&mut s, &Limits::default(), |_, r| {
            Response::json(200, &String::from_utf8_lossy(&r.body))
        })
        .unwrap();
        assert!(s
            .1
            .starts_with(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\n"));
        let resp = read_response(&mut Cursor::new(s.1), &Limits::default()).unwrap();
        assert_eq!(
            (resp.status, resp.body.as_slice()),
            (200, b"\"hi\"".as_slice())
        );

        // Refused from the head: no 100.
        let mut s = duplex(upload);
        serve_head(&mut s, &Limits::default(), |_, _| {
            Ok(Response::error(401, "who are you"))
        })
        .unwrap();
        answered(&s, "HTTP/1.1 401 ");

        // Too large: 413, no 100.
        let big = b"PUT /x HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 70000\r\n\r\n";
        let mut s = duplex(big);
        let err = serve_one(&mut s, &Limits::default(), |_, _| Response::empty(204));
        assert!(matches!(err, Err(HttpError::BodyTooLarge { .. })));
        answered(&s, "HTTP/1.1 413 ");

        // HTTP/1.0 clients do not wait for it.
        let old = b"PUT /x HTTP/1.0\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\nhi";
        let mut s = duplex(old);
        serve_one(&mut s, &Limits::default(), |_, _| Response::empty(204)).unwrap();
        answered(&s, "HTTP/1.1 204 ");
    }

    fn closer(count: &Arc<AtomicUsize>) -> Box<dyn Fn() + Send> {
        let count = Arc::clone(count);
        Box::new(move || {
            count.fetch_add(1, Ordering::SeqCst);
        })
    }

    #[test]
    fn pools_evict_the_oldest_pending_and_spare_the_authenticated() {
        let pool = Pool::new(PoolLimits {
            pending: 3,
            per_peer: 2,
            authenticated: 1,
        });
        let a = Some(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)));
        let b = Some(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2)));
        let closed: Vec<Arc<AtomicUsize>> = (0..8).map(|_| Arc::default()).collect();
        let mut manager = pool.admit(a, closer(&closed[0])).unwrap();
        assert!(manager.authenticate());
        assert!(manager.authenticate());
        assert_eq!(pool.counts(), (0, 1));
        let _a1 = pool.admit(a, closer(&closed[1])).unwrap();
        let _a2 = pool.admit(a, closer(&closed[2])).unwrap();
        // A third from `a` evicts a's oldest.
        let _a3 = pool.admit(a, closer(&closed[3])).unwrap();
        assert_eq!(closed[1].load(Ordering::SeqCst), 1);
        assert_eq!(pool.counts(), (2, 1));
        let mut b1 = pool.admit(b, closer(&closed[4])).unwrap();
        // Full: the oldest pending (a2) goes, never the authenticated one.
        let _b2 = pool.admit(b, closer(&closed[5])).unwrap();
        assert_eq!(closed[2].load(Ordering::SeqCst), 1);
        assert_eq!(closed[0].load(Ordering::SeqCst), 0);
        assert_eq!(pool.counts(), (3, 1));
        // The authenticated slots are full: b1 stays pending.
        assert!(!b1.authenticate());
        drop(manager);
        assert!(b1.authenticate());
        assert_eq!(pool.counts(), (2, 1));
        // An evicted slot cannot be authenticated, and dropping it changes nothing.
        drop(b1);
        let _c = pool.admit(None, closer(&closed[6])).unwrap();
        let mut evicted_soon = pool.admit(None, closer(&closed[7])).unwrap();
        let _d = pool.admit(None, Box::new(|| {})).unwrap();
        let _e = pool.admit(None, Box::new(|| {})).unwrap();
        let _f = pool.admit(None, Box::new(|| {})).unwrap();
        assert_eq!(closed[7].load(Ordering::SeqCst), 1);
        assert!(!evicted_soon.authenticate());
        drop(evicted_soon);
        assert_eq!(pool.counts(), (3, 0));
        // Without eviction, a full pool refuses.
        assert!(pool.try_admit().is_none());
    }

    #[test]
    fn a_slot_is_released_when_its_thread_cannot_start() {
        let pool = Pool::new(PoolLimits {
            pending: 1,
            per_peer: 1,
            authenticated: 1,
        });
        let slot = pool.try_admit().unwrap();
        // What `serve_tcp` does when spawning fails: the closure holding the slot is dropped.
        let job = move || drop(slot);
        drop(job);
        assert!(pool.try_admit().is_some());
    }

    #[test]
    fn the_head_deadline_covers_every_read() {
        let (mut client, server) = UnixStream::pair().unwrap();
        let protection = Protection {
            head_timeout: Duration::from_millis(300),
            ..Protection::default()
        };
        let mut guarded = Guarded::new(server, protection).unwrap();
        let started = Instant::now();
        let trickle = thread::spawn(move || {
            for _ in 0..20 {
                if client.write_all(b"G").is_err() {
                    break;
                }
                thread::sleep(Duration::from_millis(50));
            }
        });
        let err = read_request_head(&mut guarded, &Limits::default()).unwrap_err();
        assert!(matches!(err, HttpError::Timeout), "{err}");
        assert!(started.elapsed() < Duration::from_millis(900));
        assert_eq!(err.response().unwrap().status, 408);
        trickle.join().unwrap();
    }

    #[test]
    fn a_slow_body_is_cut() {
        let (mut client, server) = UnixStream::pair().unwrap();
        let protection = Protection {
            min_body_rate: 1000,
            rate_window: Duration::from_millis(1),
            ..Protection::default()
        };
        let mut guarded = Guarded::new(server, protection).unwrap();
        guarded.start_body();
        thread::sleep(Duration::from_millis(20));
        client.write_all(b"ab").unwrap();
        let mut buf = [0u8; 8];
        // The first read comes after the window: no byte in it, where 1 was due.
        let err = guarded.read(&mut buf).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        guarded.open();
        assert_eq!(guarded.read(&mut buf).unwrap(), 2);
    }
}
