//! What every session looks like to the one connection driver: bytes, templates and time in;
//! bytes, events and a deadline out. V1, SV2 and the Template Provider implement it, so the
//! driver (and the transports under it: TCP today, QUIC next) is written once.

use std::sync::Arc;

use quarry_work::template::WorkTemplate;

use crate::bans::Offence;
use crate::clock::Now;
use crate::pool::Pool;
use crate::v1::{Event, Session};
use crate::v2::declaration::Verdict;
use crate::v2::template_provider::{TpEvent, TpSession};
use crate::v2::PoolSession;

/// A sans-IO session the driver can run.
pub trait Connection {
    /// State shared by every connection of the same kind (the pool's duplicates, claims and
    /// extranonces), passed in on each call instead of held.
    type Shared: ?Sized;
    /// What the session reports to the runtime.
    type Event;
    /// The work the node hands out: Bitcoin's template, a Kaspa job.
    type Work;

    /// For logs: `stratum-v1`, `stratum-v2`, `sv2-template-provider`.
    fn protocol(&self) -> &'static str;
    /// Bytes from the peer.
    fn handle_bytes(&mut self, data: &[u8], now: Now, shared: &Self::Shared);
    /// New work from the node.
    fn handle_template(&mut self, template: Arc<Self::Work>, now: Now, shared: &Self::Shared);
    /// The deadline from [`Connection::poll_timeout`] passed.
    fn handle_timeout(&mut self, now: Now, shared: &Self::Shared);
    /// The server is going away: ask the peer back to `host:port` where the protocol can, and
    /// end the session.
    fn handle_shutdown(&mut self, host: &str, port: u16);
    /// The next event, oldest first.
    fn poll_event(&mut self) -> Option<Self::Event>;
    /// The oldest accepted share reported and not yet settled is durable (or is not). Sessions
    /// that hold no answers for the ledger ignore it.
    fn share_recorded(&mut self, _durable: bool) {}
    /// The node's answer to a question the session asked in an event (Job Declaration's
    /// [`Event::CheckDeclaredBlock`](crate::Event::CheckDeclaredBlock)).
    fn handle_verdict(
        &mut self,
        _request_id: u32,
        _verdict: Verdict,
        _now: Now,
        _shared: &Self::Shared,
    ) {
    }
    /// Appends everything there is to send.
    fn transmit(&mut self, out: &mut Vec<u8>);
    /// Why the session ended, once it has (allocated only then): the driver closes the stream
    /// after the last write.
    fn close_reason(&self) -> Option<String>;
    /// When [`Connection::handle_timeout`] is next due, in monotonic milliseconds.
    fn poll_timeout(&self) -> Option<u64>;
    /// The authorized worker, for the disconnect event.
    fn worker(&self) -> Option<&str> {
        None
    }
    /// What the peer did that closed the session, if that is why it closed (for bans).
    fn offence(&self) -> Option<Offence> {
        None
    }
    /// The connection is over: give back what it took from `shared`.
    fn release(&mut self, _shared: &Self::Shared) {}
}

impl Connection for Session {
    type Shared = dyn Pool;
    type Event = Event;
    type Work = WorkTemplate;

    fn protocol(&self) -> &'static str {
        "stratum-v1"
    }
    fn handle_bytes(&mut self, data: &[u8], now: Now, pool: &dyn Pool) {
        Session::handle_bytes(self, data, now, pool)
    }
    fn handle_template(&mut self, template: Arc<WorkTemplate>, now: Now, pool: &dyn Pool) {
        Session::handle_template(self, template, now, pool)
    }
    fn handle_timeout(&mut self, now: Now, pool: &dyn Pool) {
        Session::handle_timeout(self, now, pool)
    }
    fn handle_shutdown(&mut self, host: &str, port: u16) {
        // Five seconds: long enough for the new process to listen again.
        self.handle_reconnect(host, port, 5)
    }
    fn poll_event(&mut self) -> Option<Event> {
        Session::poll_event(self)
    }
    fn share_recorded(&mut self, durable: bool) {
        Session::share_recorded(self, durable)
    }
    fn transmit(&mut self, out: &mut Vec<u8>) {
        while let Some(line) = self.poll_transmit() {
            out.extend_from_slice(line.as_bytes());
        }
    }
    fn close_reason(&self) -> Option<String> {
        Session::close_reason(self).map(ToString::to_string)
    }
    fn poll_timeout(&self) -> Option<u64> {
        Session::poll_timeout(self)
    }
    fn worker(&self) -> Option<&str> {
        Session::worker(self)
    }
    fn offence(&self) -> Option<Offence> {
        Session::offence(self)
    }
    fn release(&mut self, pool: &dyn Pool) {
        if let Some(extranonce1) = self.extranonce1() {
            pool.release_extranonce1(extranonce1);
        }
    }
}

impl Connection for PoolSession {
    type Shared = dyn Pool;
    type Event = Event;
    type Work = WorkTemplate;

    fn protocol(&self) -> &'static str {
        "stratum-v2"
    }
    fn handle_bytes(&mut self, data: &[u8], now: Now, pool: &dyn Pool) {
        PoolSession::handle_bytes(self, data, now, pool)
    }
    fn handle_template(&mut self, template: Arc<WorkTemplate>, now: Now, pool: &dyn Pool) {
        PoolSession::handle_template(self, template, now, pool)
    }
    fn handle_timeout(&mut self, now: Now, pool: &dyn Pool) {
        PoolSession::handle_timeout(self, now, pool)
    }
    fn handle_shutdown(&mut self, host: &str, port: u16) {
        self.handle_reconnect(host, port)
    }
    fn poll_event(&mut self) -> Option<Event> {
        PoolSession::poll_event(self)
    }
    fn share_recorded(&mut self, durable: bool) {
        PoolSession::share_recorded(self, durable)
    }
    fn handle_verdict(&mut self, request_id: u32, verdict: Verdict, now: Now, pool: &dyn Pool) {
        PoolSession::handle_verdict(self, request_id, verdict, now, pool)
    }
    fn transmit(&mut self, out: &mut Vec<u8>) {
        while let Some(bytes) = self.poll_transmit() {
            out.extend_from_slice(&bytes);
        }
    }
    fn close_reason(&self) -> Option<String> {
        PoolSession::close_reason(self).map(ToString::to_string)
    }
    fn poll_timeout(&self) -> Option<u64> {
        PoolSession::poll_timeout(self)
    }
    fn worker(&self) -> Option<&str> {
        PoolSession::worker(self)
    }
    fn offence(&self) -> Option<Offence> {
        PoolSession::offence(self)
    }
    fn release(&mut self, pool: &dyn Pool) {
        PoolSession::release(self, pool)
    }
}

/// The Template Provider needs nothing shared: each pool connection gets every template.
impl Connection for TpSession {
    type Shared = ();
    type Event = TpEvent;
    type Work = WorkTemplate;

    fn protocol(&self) -> &'static str {
        "sv2-template-provider"
    }
    fn handle_bytes(&mut self, data: &[u8], now: Now, _: &()) {
        TpSession::handle_bytes(self, data, now)
    }
    fn handle_template(&mut self, template: Arc<WorkTemplate>, _now: Now, _: &()) {
        TpSession::handle_template(self, template)
    }
    fn handle_timeout(&mut self, now: Now, _: &()) {
        TpSession::handle_timeout(self, now)
    }
    fn handle_shutdown(&mut self, _host: &str, _port: u16) {
        // The Template Distribution Protocol has no reconnect message: the pool redials.
        self.shut_down()
    }
    fn poll_event(&mut self) -> Option<TpEvent> {
        TpSession::poll_event(self)
    }
    fn transmit(&mut self, out: &mut Vec<u8>) {
        while let Some(bytes) = self.poll_transmit() {
            out.extend_from_slice(&bytes);
        }
    }
    fn close_reason(&self) -> Option<String> {
        TpSession::close_reason(self).map(ToString::to_string)
    }
    fn poll_timeout(&self) -> Option<u64> {
        TpSession::poll_timeout(self)
    }
}

/// A boxed session is run like the session itself (SV2 sessions are boxed so that V1
/// connections, the many, do not pay for their size).
impl<C: Connection + ?Sized> Connection for Box<C> {
    type Shared = C::Shared;
    type Event = C::Event;
    type Work = C::Work;

    fn protocol(&self) -> &'static str {
        (**self).protocol()
    }
    fn handle_bytes(&mut self, data: &[u8], now: Now, shared: &C::Shared) {
        (**self).handle_bytes(data, now, shared)
    }
    fn handle_template(&mut self, template: Arc<C::Work>, now: Now, shared: &C::Shared) {
        (**self).handle_template(template, now, shared)
    }
    fn handle_timeout(&mut self, now: Now, shared: &C::Shared) {
        (**self).handle_timeout(now, shared)
    }
    fn handle_shutdown(&mut self, host: &str, port: u16) {
        (**self).handle_shutdown(host, port)
    }
    fn poll_event(&mut self) -> Option<C::Event> {
        (**self).poll_event()
    }
    fn share_recorded(&mut self, durable: bool) {
        (**self).share_recorded(durable)
    }
    fn handle_verdict(&mut self, request_id: u32, verdict: Verdict, now: Now, shared: &C::Shared) {
        (**self).handle_verdict(request_id, verdict, now, shared)
    }
    fn transmit(&mut self, out: &mut Vec<u8>) {
        (**self).transmit(out)
    }
    fn close_reason(&self) -> Option<String> {
        (**self).close_reason()
    }
    fn poll_timeout(&self) -> Option<u64> {
        (**self).poll_timeout()
    }
    fn worker(&self) -> Option<&str> {
        (**self).worker()
    }
    fn offence(&self) -> Option<Offence> {
        (**self).offence()
    }
    fn release(&mut self, shared: &C::Shared) {
        (**self).release(shared)
    }
}
