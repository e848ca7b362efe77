//! The one connection driver. Every session (Stratum V1, Stratum V2, the Template Provider) is a
//! sans-IO [`Connection`]; this loop moves bytes between it and a [`ByteStream`], feeds it
//! templates, the time and shutdown, and hands its events to a [`Sink`]. No protocol decisions
//! are made here, and a new transport (TLS, QUIC) is a new `ByteStream`, not a new loop.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use quarry_ledger::Receipt;
use quarry_stratum::v2::declaration::Verdict;
use quarry_stratum::{Connection, Now};
use quarry_work::template::WorkTemplate;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tracing::{debug, error};

/// Bytes read from a connection at a time.
const READ_CHUNK: usize = 8 * 1024;

/// Milliseconds added to the wall clock: the injectable clock source (see [`follow_clock_file`]).
static CLOCK_OFFSET_MS: AtomicI64 = AtomicI64::new(0);

/// Unix time in milliseconds: calendar time, for timestamps only (never for deadlines).
pub fn unix_ms() -> u64 {
    let real = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0);
    u64::try_from(real.saturating_add(CLOCK_OFFSET_MS.load(Ordering::Relaxed))).unwrap_or(0)
}

/// Steps the pool's wall clock by the offset (milliseconds, may be negative) written in `path`,
/// re-read every 100 ms: how the fault tests move the calendar under a running pool without
/// changing the machine's clock (`QUARRY_CLOCK_OFFSET_FILE`). Deadlines run on the monotonic
/// clock and never see it.
pub fn follow_clock_file(path: std::path::PathBuf) {
    tokio::spawn(async move {
        loop {
            if let Ok(text) = tokio::fs::read_to_string(&path).await {
                if let Ok(offset) = text.trim().parse::<i64>() {
                    if CLOCK_OFFSET_MS.swap(offset, Ordering::Relaxed) != offset {
                        tracing::warn!(
                            offset_ms = offset,
                            "wall clock stepped (QUARRY_CLOCK_OFFSET_FILE)"
                        );
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
}

/// Both clocks, read once per event.
pub fn now() -> Now {
    static ORIGIN: OnceLock<Instant> = OnceLock::new();
    let origin = *ORIGIN.get_or_init(Instant::now);
    Now {
        mono_ms: u64::try_from(origin.elapsed().as_millis()).unwrap_or(u64::MAX),
        unix_ms: unix_ms(),
    }
}

/// A byte stream the driver can wait on without holding a read buffer per idle connection.
pub trait ByteStream: AsyncWrite + Unpin + Send {
    /// Ready once a read may make progress (data, end of stream or an error).
    fn poll_read_ready(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>>;
    /// Reads what is there without waiting: `WouldBlock` when nothing is, `Ok(0)` at the end.
    fn try_read(&mut self, buf: &mut [u8]) -> io::Result<usize>;
    /// Writes what fits without waiting: `WouldBlock` when nothing does.
    fn try_write(&mut self, buf: &[u8]) -> io::Result<usize>;
    /// Where the peer reached us, for the reconnect address on shutdown.
    fn local_addr(&self) -> Option<SocketAddr>;
}

impl ByteStream for TcpStream {
    fn poll_read_ready(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // The waker sits in the socket's own slot, so a waiting connection holds a pointer
        // instead of a buffer or a 150-byte waiter.
        TcpStream::poll_read_ready(self, cx)
    }
    fn try_read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        // A short read has drained the socket, so it also tells tokio the readiness is spent
        // (WouldBlock inside `try_io` clears it, for the event seen only): the next wait goes
        // to epoll at once, instead of first a recv that could only say WouldBlock. One
        // syscall fewer per batch of lines.
        let mut short = None;
        let result = self.try_io(tokio::io::Interest::READABLE, || {
            let socket = socket2::SockRef::from(&*self);
            let n = std::io::Read::read(&mut &*socket, buf)?;
            if n > 0 && n < buf.len() {
                short = Some(n);
                return Err(io::ErrorKind::WouldBlock.into());
            }
            Ok(n)
        });
        match short {
            Some(n) => Ok(n),
            None => result,
        }
    }
    fn try_write(&mut self, buf: &[u8]) -> io::Result<usize> {
        TcpStream::try_write(self, buf)
    }
    fn local_addr(&self) -> Option<SocketAddr> {
        TcpStream::local_addr(self).ok()
    }
}

/// Any `AsyncRead + AsyncWrite` (TLS, QUIC streams, in-memory pipes) as a [`ByteStream`]. It
/// reads ahead into a buffer that exists only while read bytes wait for the session.
// Serving uses plain TCP until the TLS and QUIC listeners land; the driver's tests run on it.
#[cfg_attr(not(test), allow(dead_code))]
pub struct Buffered<S> {
    inner: S,
    pending: Vec<u8>,
    local: Option<SocketAddr>,
    ended: bool,
}

#[cfg_attr(not(test), allow(dead_code))]
impl<S> Buffered<S> {
    /// Wraps `inner`; `local` is the address to send miners back to on shutdown.
    pub fn new(inner: S, local: Option<SocketAddr>) -> Self {
        Buffered {
            inner,
            pending: Vec::new(),
            local,
            ended: false,
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send> ByteStream for Buffered<S> {
    fn poll_read_ready(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if !self.pending.is_empty() || self.ended {
            return Poll::Ready(Ok(()));
        }
        let mut chunk = [0u8; READ_CHUNK];
        let mut buf = ReadBuf::new(&mut chunk);
        match Pin::new(&mut self.inner).poll_read(cx, &mut buf) {
            Poll::Ready(Ok(())) => {
                self.ended = buf.filled().is_empty();
                self.pending.extend_from_slice(buf.filled());
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => Poll::Pending,
        }
    }
    fn try_read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.pending.is_empty() {
            return match self.ended {
                true => Ok(0),
                false => Err(io::ErrorKind::WouldBlock.into()),
            };
        }
        let n = buf.len().min(self.pending.len());
        buf[..n].copy_from_slice(&self.pending[..n]);
        self.pending.drain(..n);
        if self.pending.is_empty() {
            self.pending = Vec::new();
        }
        Ok(n)
    }
    fn try_write(&mut self, _buf: &[u8]) -> io::Result<usize> {
        // No non-blocking write on a generic stream: everything goes through `write_all`.
        Err(io::ErrorKind::WouldBlock.into())
    }
    fn local_addr(&self) -> Option<SocketAddr> {
        self.local
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Buffered<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// What became of an event the session may be holding an answer for.
pub enum Recording<'a> {
    /// Nothing to record (not an accepted share).
    Nothing,
    /// Queued in the share log; durable once the receipt says so.
    Queued(Receipt),
    /// The share log would not take it: the answer must never be sent.
    Refused,
    /// The share log's queue is full: wait for room. Boxed, and only then, so that an idle
    /// connection's task does not carry room for this wait.
    Waiting(Pin<Box<dyn Future<Output = Recording<'a>> + Send + 'a>>),
    /// Not a share: a question for the node (Job Declaration's block check), whose answer
    /// goes back to the session under the request id.
    Verdict(u32, Pin<Box<dyn Future<Output = Verdict> + Send + 'a>>),
}

/// What a connection follows: the newest template, and the server's shutdown. One channel for
/// both, so that each idle connection waits on one `changed()` future instead of two (120
/// bytes each, in every connection's task).
#[derive(Debug)]
pub struct Work<W = WorkTemplate> {
    /// The newest template (or Kaspa job).
    pub template: Option<Arc<W>>,
    /// Set once when the server is going away.
    pub closing: bool,
}

// By hand: derived, both would ask `W` for what only `Arc<W>` needs.
impl<W> Clone for Work<W> {
    fn clone(&self) -> Self {
        Work {
            template: self.template.clone(),
            closing: self.closing,
        }
    }
}

impl<W> Default for Work<W> {
    fn default() -> Self {
        Work {
            template: None,
            closing: false,
        }
    }
}

/// Follows `templates` into one [`Work`] channel until `shutdown` fires, then says closing.
pub fn follow<W: Send + Sync + 'static>(
    mut templates: watch::Receiver<Option<Arc<W>>>,
    mut shutdown: watch::Receiver<bool>,
) -> watch::Receiver<Work<W>> {
    let first = Work {
        template: templates.borrow_and_update().clone(),
        closing: false,
    };
    let (publish, work) = watch::channel(first);
    tokio::spawn(async move {
        loop {
            tokio::select! {
                changed = templates.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    let template = templates.borrow_and_update().clone();
                    publish.send_modify(|w| w.template = template);
                }
                _ = shutdown.changed() => {
                    publish.send_modify(|w| w.closing = true);
                    return;
                }
            }
        }
    });
    work
}

/// Where a connection's events go.
pub trait Sink<E>: Sync {
    /// Acts on one event, at once. An accepted share is queued for the share log here, and
    /// its [`Recording`] tells the driver when the session may answer it.
    fn handle(&self, event: E) -> Recording<'_>;
    /// Whether the connection may go on (false once its peer is banned): checked after every
    /// round of events.
    fn keep_open(&self) -> bool {
        true
    }
}

/// What every connection of a listener shares.
pub struct Environment<'a, T: ?Sized, W = WorkTemplate> {
    /// The sessions' shared state.
    pub shared: &'a T,
    /// The newest work, and whether the server is going away.
    pub work: watch::Receiver<Work<W>>,
    /// How long one write may block.
    pub write_timeout: Duration,
    /// The peer, for logs.
    pub peer: SocketAddr,
}

/// Runs `conn` over `stream` until either ends; `first` holds bytes already read (the protocol
/// sniff), freed once the session has them. Returns the session, released, for what the caller
/// reports about it.
// A plain fn returning an `async move` block, not an `async fn`: an async fn copies its
// arguments (the session above all) into locals, so every connection's task would carry each
// of them twice.
#[allow(clippy::manual_async_fn)]
pub fn drive<'a, C, S, K>(
    mut conn: C,
    mut stream: S,
    first: Vec<u8>,
    mut env: Environment<'a, C::Shared, C::Work>,
    sink: &'a K,
) -> impl Future<Output = C> + 'a
where
    C: Connection + Send + 'a,
    C::Shared: Sync,
    S: ByteStream + 'a,
    K: Sink<C::Event>,
{
    async move {
        let shared = env.shared;
        let peer = env.peer;
        debug!(%peer, protocol = conn.protocol(), "connected");
        if let Some(template) = env.work.borrow_and_update().template.clone() {
            conn.handle_template(template, now(), shared);
        }
        if !first.is_empty() {
            conn.handle_bytes(&first, now(), shared);
        }
        drop(first);
        // Shutdown is acted on once; afterwards the loop only drains what the session still sends.
        let mut shutting_down = false;
        loop {
            // Events first. The session holds each accepted share's answer until it hears here
            // that the share log has the share durably; one the log cannot take closes the
            // connection unanswered.
            let mut receipts = Vec::new();
            while let Some(event) = conn.poll_event() {
                let mut recording = sink.handle(event);
                while let Recording::Waiting(wait) = recording {
                    recording = wait.await;
                }
                match recording {
                    Recording::Nothing | Recording::Waiting(_) => {}
                    Recording::Verdict(request_id, verdict) => {
                        let verdict = verdict.await;
                        conn.handle_verdict(request_id, verdict, now(), shared);
                    }
                    Recording::Queued(receipt) => receipts.push(Some(receipt)),
                    Recording::Refused => receipts.push(None),
                }
            }
            for receipt in receipts {
                let durable = match receipt {
                    Some(receipt) => match receipt.durable().await {
                        Ok(()) => true,
                        Err(e) => {
                            error!(%peer, error = %e, "share not durable: answered with an error, not acknowledged");
                            false
                        }
                    },
                    None => false,
                };
                conn.share_recorded(durable);
            }
            // Allocated only when there is something to send: an idle connection keeps no buffer.
            let mut out = Vec::new();
            conn.transmit(&mut out);
            if !out.is_empty() && write(&mut stream, &out, env.write_timeout).await.is_err() {
                debug!(%peer, "write failed or timed out");
                break;
            }
            if let Some(reason) = conn.close_reason() {
                debug!(%peer, %reason, "closing");
                break;
            }
            if !sink.keep_open() {
                debug!(%peer, "closing: peer banned");
                break;
            }
            let deadline = conn.poll_timeout();
            let sleep = async {
                match deadline {
                    Some(at) => {
                        tokio::time::sleep(Duration::from_millis(at.saturating_sub(now().mono_ms)))
                            .await
                    }
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                // Wait for readability, then read into the stack: no read buffer is held per
                // connection while it waits, which is most of an idle connection's life.
                ready = std::future::poll_fn(|cx| stream.poll_read_ready(cx)) => {
                    if ready.is_err() {
                        break;
                    }
                    let mut buf = [0u8; READ_CHUNK];
                    match stream.try_read(&mut buf) {
                        Ok(0) => break,
                        Ok(n) => conn.handle_bytes(&buf[..n], now(), shared),
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                        Err(_) => break,
                    }
                }
                changed = env.work.changed(), if !shutting_down => {
                    if changed.is_err() {
                        break;
                    }
                    let (template, closing) = {
                        let work = env.work.borrow_and_update();
                        (work.template.clone(), work.closing)
                    };
                    if closing {
                        shutting_down = true;
                        // Graceful restart: miners come back to the same address after a pause.
                        match stream.local_addr() {
                            Some(local) => conn.handle_shutdown(&local.ip().to_string(), local.port()),
                            None => conn.handle_shutdown("", 0),
                        }
                    } else if let Some(template) = template {
                        conn.handle_template(template, now(), shared);
                    }
                }
                _ = sleep => conn.handle_timeout(now(), shared),
            }
        }
        conn.release(shared);
        conn
    }
}

/// Writes `out` whole: at once when it fits the socket buffer (most writes), else waiting at
/// most `timeout`. The wait is boxed: its state would otherwise sit in every connection's task.
async fn write<S: ByteStream>(stream: &mut S, out: &[u8], timeout: Duration) -> io::Result<()> {
    let written = match stream.try_write(out) {
        Ok(n) => n,
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
        Err(e) => return Err(e),
    };
    if written == out.len() {
        return Ok(());
    }
    match Box::pin(tokio::time::timeout(
        timeout,
        stream.write_all(&out[written..]),
    ))
    .await
    {
        Ok(result) => result,
        Err(_) => Err(io::ErrorKind::TimedOut.into()),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use quarry_stratum::testkit::{config, template_at, test_pool, WireJob, ADDRESS, HARD_BITS};
    use quarry_stratum::v1::{Event, Session};
    use quarry_stratum::Pool;
    use quarry_work::{Difficulty, Target};
    use serde_json::{json, Value};
    use tokio::io::{AsyncBufReadExt, BufReader, DuplexStream};

    use super::*;

    /// A share log that refuses every share, and what it was offered.
    #[derive(Default)]
    struct Refusing {
        offered: Mutex<u32>,
    }

    impl Sink<Event> for Refusing {
        fn handle(&self, event: Event) -> Recording<'_> {
            match event {
                Event::ShareAccepted(_) => {
                    *self.offered.lock().expect("lock") += 1;
                    Recording::Refused
                }
                _ => Recording::Nothing,
            }
        }
    }

    struct Rig {
        lines: tokio::io::Lines<BufReader<tokio::io::ReadHalf<DuplexStream>>>,
        writer: tokio::io::WriteHalf<DuplexStream>,
    }

    impl Rig {
        async fn send(&mut self, value: Value) {
            let line = format!("{value}\n");
            self.writer.write_all(line.as_bytes()).await.expect("write");
        }
        async fn next(&mut self) -> Option<Value> {
            let line = tokio::time::timeout(Duration::from_secs(5), self.lines.next_line())
                .await
                .expect("the driver answers or closes in time")
                .expect("read")?;
            Some(serde_json::from_str(&line).expect("JSON lines"))
        }
    }

    /// Starts a V1 session on the driver over an in-memory pipe: no socket anywhere.
    fn start(
        sink: Arc<Refusing>,
        shutdown: watch::Receiver<bool>,
    ) -> (Rig, tokio::task::JoinHandle<Session>) {
        let (client, server) = tokio::io::duplex(64 * 1024);
        let (_keep, templates) =
            watch::channel(Some(template_at(1, 7, HARD_BITS, unix_ms() / 1000)));
        let work = follow(templates, shutdown);
        let local: SocketAddr = "127.0.0.1:3333".parse().expect("address");
        let task = tokio::spawn(async move {
            let _keep = _keep;
            let pool = test_pool();
            let env = Environment {
                shared: &pool as &dyn Pool,
                work,
                write_timeout: Duration::from_secs(5),
                peer: "127.0.0.1:40000".parse().expect("address"),
            };
            let session = Session::new(Arc::new(config()), now());
            drive(
                session,
                Buffered::new(server, Some(local)),
                Vec::new(),
                env,
                &*sink,
            )
            .await
        });
        let (reader, writer) = tokio::io::split(client);
        let rig = Rig {
            lines: BufReader::new(reader).lines(),
            writer,
        };
        (rig, task)
    }

    #[tokio::test]
    async fn a_share_the_log_refuses_is_answered_with_an_error_and_the_connection_stays() {
        let sink = Arc::new(Refusing::default());
        let (_stop, shutdown) = watch::channel(false);
        let (mut rig, task) = start(Arc::clone(&sink), shutdown);
        rig.send(json!({"id": 1, "method": "mining.subscribe", "params": []}))
            .await;
        let subscribed = rig.next().await.expect("subscribe answer");
        let extranonce1 = hex::decode(subscribed["result"][1].as_str().expect("hex")).expect("hex");
        rig.send(json!({"id": 2, "method": "mining.authorize", "params": [format!("{ADDRESS}.rig"), "x"]}))
            .await;
        let (mut difficulty, mut job) = (0.0, None);
        while job.is_none() {
            let message = rig.next().await.expect("difficulty and job");
            match message["method"].as_str() {
                Some("mining.set_difficulty") => {
                    difficulty = message["params"][0].as_f64().expect("number")
                }
                Some("mining.notify") => job = WireJob::from_params(&message["params"]).ok(),
                _ => assert_eq!(message["result"], true, "{message}"),
            }
        }
        let job = job.expect("a job");
        let target = Target::from_difficulty(Difficulty::new(difficulty).expect("positive"));
        let en2 = [0u8; 8];
        let nonce = (0u32..)
            .find(|n| target.is_met_by(&job.hash(&extranonce1, &en2, job.version, job.ntime, *n)))
            .expect("a nonce");
        rig.send(json!({"id": 3, "method": "mining.submit", "params": [
            format!("{ADDRESS}.rig"), job.job_id, hex::encode(en2),
            format!("{:08x}", job.ntime), format!("{nonce:08x}")]}))
            .await;
        // The share is answered, never with true, and the connection serves on.
        let answer = loop {
            let message = rig.next().await.expect("an answer to the share");
            if message["id"] == json!(3) {
                break message;
            }
        };
        assert_eq!(answer["result"], Value::Null, "{answer}");
        assert_eq!(answer["error"][0], 20, "{answer}");
        rig.send(json!({"id": 4, "method": "mining.extranonce.subscribe", "params": []}))
            .await;
        let next = rig.next().await.expect("still served");
        assert_eq!(next["id"], 4, "{next}");
        assert_eq!(*sink.offered.lock().expect("lock"), 1);
        drop(rig);
        let session = task.await.expect("driver");
        assert_ne!(
            session.close_reason(),
            Some(&quarry_stratum::v1::CloseReason::ShareNotRecorded)
        );
    }

    #[tokio::test]
    async fn shutdown_sends_miners_back_to_the_address_they_dialled() {
        let (stop, shutdown) = watch::channel(false);
        let (mut rig, task) = start(Arc::new(Refusing::default()), shutdown);
        rig.send(json!({"id": 1, "method": "mining.subscribe", "params": []}))
            .await;
        rig.next().await.expect("subscribe answer");
        stop.send(true).expect("driver listens");
        let reconnect = rig.next().await.expect("client.reconnect");
        assert_eq!(reconnect["method"], "client.reconnect");
        assert_eq!(reconnect["params"], json!(["127.0.0.1", 3333, 5]));
        assert!(rig.next().await.is_none(), "the connection ends");
        task.await.expect("driver");
    }
}
