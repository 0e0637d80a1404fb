//! IQ request/response tracking (RFC 6120 §8.2.3: every `get`/`set` gets exactly one
//! `result` or `error` with the same id) and a small client actor built on it.
//!
//! [`IqTracker`] is pure bookkeeping: ids in, responses matched, deadlines checked against
//! a `now` the caller passes. A load generator that owns its socket loop uses it directly;
//! [`Client`] is the actor for everyone else: a task owns the negotiated stream, handles
//! send requests and wait for responses over bounded channels.

use std::collections::HashMap;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::{Instant, sleep_until};

use super::{Incoming, XmppStream};
use crate::error::Error;
use crate::jid::Jid;
use crate::stanza::{Iq, ping};
use crate::xml::Element;

/// What a tracked request resolves to: the response (`result` or `error`: inspect
/// [`Iq::kind`]), or [`Error::Timeout`] / [`Error::Closed`].
pub type IqResponse = Result<Iq, Error>;

struct Pending {
    /// The request's `to`: a response must come from there (RFC 6120 §8.1.2.1).
    to: Option<String>,
    deadline: Instant,
    tx: oneshot::Sender<IqResponse>,
}

/// Matches IQ responses to requests. Bounded: at most `max_pending` requests may wait at
/// once, so a peer that never answers cannot grow the table without limit.
#[derive(Default)]
pub struct IqTracker {
    prefix: String,
    next: u64,
    max_pending: usize,
    pending: HashMap<String, Pending>,
}

impl std::fmt::Debug for IqTracker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IqTracker")
            .field("prefix", &self.prefix)
            .field("next", &self.next)
            .field("pending", &self.pending.len())
            .finish()
    }
}

impl IqTracker {
    /// A tracker whose generated ids are `<prefix><n>`.
    pub fn new(prefix: &str, max_pending: usize) -> Self {
        Self {
            prefix: prefix.to_owned(),
            next: 0,
            max_pending,
            pending: HashMap::new(),
        }
    }

    /// A fresh id.
    pub fn next_id(&mut self) -> String {
        self.next += 1;
        format!("{}{}", self.prefix, self.next)
    }

    /// Registers the request `iq` (a fresh id is assigned when it has none) with a
    /// deadline of `now + timeout`; the receiver yields its response. Fails with
    /// `policy-violation` when `max_pending` requests already wait, and for a request id
    /// already in use.
    pub fn track(
        &mut self,
        iq: &mut Iq,
        now: Instant,
        timeout: Duration,
    ) -> Result<oneshot::Receiver<IqResponse>, Error> {
        let (tx, rx) = oneshot::channel();
        self.track_into(iq, now, timeout, tx)?;
        Ok(rx)
    }

    /// [`Self::track`], answering on a channel the caller made. On refusal the error is
    /// returned and `tx` is dropped.
    pub fn track_into(
        &mut self,
        iq: &mut Iq,
        now: Instant,
        timeout: Duration,
        tx: oneshot::Sender<IqResponse>,
    ) -> Result<(), Error> {
        if !iq.is_request() {
            return Err(Error::BadFormat("only get and set IQs are tracked".into()));
        }
        if self.pending.len() >= self.max_pending {
            return Err(Error::PolicyViolation(format!(
                "{} IQ requests already wait for a response",
                self.pending.len()
            )));
        }
        let id = match &iq.id {
            Some(id) => id.clone(),
            None => {
                let id = self.next_id();
                iq.id = Some(id.clone());
                id
            }
        };
        if self.pending.contains_key(&id) {
            return Err(Error::BadFormat(format!("IQ id {id:?} is already pending")));
        }
        self.pending.insert(
            id,
            Pending {
                to: iq.to.clone(),
                deadline: now + timeout,
                tx,
            },
        );
        Ok(())
    }

    /// Offers a received IQ: a `result`/`error` answering a pending request is delivered
    /// (`None` returned); anything else is handed back.
    pub fn on_iq(&mut self, iq: Iq) -> Option<Iq> {
        if iq.is_request() {
            return Some(iq);
        }
        let Some(id) = iq.id.as_deref() else {
            return Some(iq);
        };
        let Some(p) = self.pending.get(id) else {
            return Some(iq);
        };
        // A response must come from the entity the request went to; a request to our
        // server (no `to`) is answered without `from` or from the server's domain, which
        // the stream already authenticated.
        if let (Some(to), Some(from)) = (&p.to, &iq.from)
            && !same_jid(to, from)
        {
            return Some(iq);
        }
        if let Some(p) = self.pending.remove(id) {
            let _ = p.tx.send(Ok(iq));
        }
        None
    }

    /// Fails every request whose deadline is at or before `now` with
    /// [`Error::Timeout`]; returns how many.
    pub fn expire(&mut self, now: Instant) -> usize {
        let due: Vec<String> = self
            .pending
            .iter()
            .filter(|(_, p)| p.deadline <= now)
            .map(|(id, _)| id.clone())
            .collect();
        for id in &due {
            if let Some(p) = self.pending.remove(id) {
                let _ = p.tx.send(Err(Error::Timeout("IQ response timer")));
            }
        }
        due.len()
    }

    /// The earliest deadline.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.pending.values().map(|p| p.deadline).min()
    }

    /// Requests waiting.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// Fails every pending request with [`Error::Closed`] (the stream ended).
    pub fn close(&mut self) {
        for (_, p) in self.pending.drain() {
            let _ = p.tx.send(Err(Error::Closed));
        }
    }
}

fn same_jid(a: &str, b: &str) -> bool {
    match (Jid::parse(a), Jid::parse(b)) {
        (Ok(a), Ok(b)) => a == b,
        _ => a == b,
    }
}

enum Command {
    Iq(Iq, Duration, oneshot::Sender<IqResponse>),
    Send(Element, oneshot::Sender<()>),
}

/// Most IQ requests one [`Client`] keeps waiting at once.
const CLIENT_MAX_PENDING: usize = 1024;
/// Commands queued to the connection task (requests in flight beyond this wait for room).
const CLIENT_COMMANDS: usize = 64;

/// A negotiated stream driven by its own task (conventions: clients are actors).
///
/// The task answers XEP-0199 pings, matches IQ responses to [`Client::iq`] requests and
/// hands every other stanza (messages, presence, IQ requests) to the inbound channel
/// returned by [`Client::spawn`]; when that channel is full it stops reading, so a slow
/// consumer slows the peer down instead of growing memory.
#[derive(Debug)]
pub struct Client {
    tx: mpsc::Sender<Command>,
    jid: Option<Jid>,
    task: JoinHandle<Result<(), Error>>,
}

impl Client {
    /// Starts the task on `stream`; stanzas that are not responses arrive on the returned
    /// receiver, which holds at most `inbound` of them.
    pub fn spawn<T>(stream: XmppStream<T>, inbound: usize) -> (Self, mpsc::Receiver<Element>)
    where
        T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let jid = stream.negotiated().jid.clone();
        let (tx, rx) = mpsc::channel(CLIENT_COMMANDS);
        let (in_tx, in_rx) = mpsc::channel(inbound.max(1));
        let task = tokio::spawn(run_client_task(stream, rx, in_tx));
        (Self { tx, jid, task }, in_rx)
    }

    /// Our full JID (the bind result), when bound.
    pub fn jid(&self) -> Option<&Jid> {
        self.jid.as_ref()
    }

    /// Sends the request `iq` (an id is assigned when it has none) and waits up to
    /// `timeout` for its `result` or `error`.
    pub async fn iq(&self, iq: Iq, timeout: Duration) -> IqResponse {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Command::Iq(iq, timeout, tx))
            .await
            .map_err(|_| Error::Closed)?;
        rx.await.map_err(|_| Error::Closed)?
    }

    /// Sends one stanza; returns once it was handed to the socket.
    pub async fn send(&self, el: Element) -> Result<(), Error> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Command::Send(el, tx))
            .await
            .map_err(|_| Error::Closed)?;
        rx.await.map_err(|_| Error::Closed)
    }

    /// Closes the stream (`</stream:stream>`) and returns how the task ended.
    pub async fn close(self) -> Result<(), Error> {
        drop(self.tx);
        self.task.await.map_err(|_| Error::Closed)?
    }
}

async fn run_client_task<T>(
    mut stream: XmppStream<T>,
    mut commands: mpsc::Receiver<Command>,
    inbound: mpsc::Sender<Element>,
) -> Result<(), Error>
where
    T: AsyncRead + AsyncWrite + Unpin,
{
    let mut tracker = IqTracker::new("c", CLIENT_MAX_PENDING);
    let result = loop {
        let deadline = tracker.next_deadline();
        let step = tokio::select! {
            cmd = commands.recv() => match cmd {
                None => break Ok(()),
                Some(Command::Iq(mut iq, timeout, tx)) => {
                    match tracker.track(&mut iq, Instant::now(), timeout) {
                        Ok(rx) => {
                            stream.queue(&iq.to_element());
                            // The caller waits on its own channel; relay the answer
                            // (response, timeout or close) without holding up this loop.
                            tokio::spawn(async move {
                                let _ = tx.send(rx.await.unwrap_or(Err(Error::Closed)));
                            });
                        }
                        Err(e) => {
                            let _ = tx.send(Err(e));
                        }
                    }
                    stream.flush().await
                }
                Some(Command::Send(el, done)) => {
                    stream.queue(&el);
                    let r = stream.flush().await;
                    let _ = done.send(());
                    r
                }
            },
            r = stream.next() => match r {
                Err(e) => break Err(e),
                Ok(Incoming::Keepalive) => Ok(()),
                Ok(Incoming::Element(el)) => on_element(&mut stream, &mut tracker, &inbound, el).await,
            },
            () = sleep_until(deadline.unwrap_or_else(Instant::now)), if deadline.is_some() => {
                tracker.expire(Instant::now());
                Ok(())
            }
        };
        if let Err(e) = step {
            break Err(e);
        }
    };
    tracker.close();
    match result {
        Ok(()) => {
            stream.close(None).await;
            Ok(())
        }
        Err(e) => {
            stream.close(Some(&e)).await;
            Err(e)
        }
    }
}

async fn on_element<T>(
    stream: &mut XmppStream<T>,
    tracker: &mut IqTracker,
    inbound: &mpsc::Sender<Element>,
    el: Element,
) -> Result<(), Error>
where
    T: AsyncRead + AsyncWrite + Unpin,
{
    if Iq::matches(&el) {
        let iq = Iq::from_element(&el)?;
        if ping::is_ping(&iq) {
            stream.queue(&iq.result().to_element());
            return stream.flush().await;
        }
        if tracker.on_iq(iq).is_none() {
            return Ok(());
        }
    }
    // The application gone means nobody reads: close rather than drop stanzas silently.
    inbound.send(el).await.map_err(|_| Error::Closed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stanza::{IqType, ns};

    fn req(to: Option<&str>) -> Iq {
        Iq::request(IqType::Get, "x", to, Element::with_ns("ping", ns::PING))
    }

    #[tokio::test(start_paused = true)]
    async fn responses_match_by_id_and_sender() {
        let mut t = IqTracker::new("q", 2);
        let now = Instant::now();
        let mut a = req(Some("pubsub.localhost"));
        a.id = None;
        let rx_a = t.track(&mut a, now, Duration::from_secs(5)).expect("track");
        assert_eq!(a.id.as_deref(), Some("q1"));
        let mut b = req(None);
        b.id = Some("mine".into());
        let rx_b = t.track(&mut b, now, Duration::from_secs(1)).expect("track");
        let mut c = req(None);
        assert!(matches!(
            t.track(&mut c, now, Duration::from_secs(1)),
            Err(Error::PolicyViolation(_))
        ));
        // A response from someone else is not taken.
        let mut spoof = a.result();
        spoof.from = Some("mallory@localhost".into());
        assert!(t.on_iq(spoof).is_some());
        let mut ok = a.result();
        ok.from = Some("PubSub.localhost".into());
        assert!(t.on_iq(ok).is_none());
        assert_eq!(
            rx_a.await.expect("answered").expect("ok").kind,
            IqType::Result
        );
        // The other one times out.
        assert_eq!(t.next_deadline(), Some(now + Duration::from_secs(1)));
        assert_eq!(t.expire(now + Duration::from_secs(1)), 1);
        assert!(matches!(
            rx_b.await.expect("answered"),
            Err(Error::Timeout(_))
        ));
        assert_eq!(t.pending(), 0);
    }

    #[tokio::test]
    async fn close_fails_pending() {
        let mut t = IqTracker::new("q", 4);
        let mut a = req(None);
        let rx = t
            .track(&mut a, Instant::now(), Duration::from_secs(5))
            .expect("track");
        t.close();
        assert!(matches!(rx.await.expect("answered"), Err(Error::Closed)));
    }
}
