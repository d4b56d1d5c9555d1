//! Admission limits: per-IP handshake rate (governor, keyed), connection permits (global and
//! per IP, for sessions and for handshakes in flight), and the per-connection message bucket.
//! Every rate limit reads time through [`TokioClock`].
//!
//! Memory stays bounded under many distinct addresses: the keyed limiter is pruned on a timer
//! (`retain_recent` + `shrink_to_fit`), IPv6 clients are keyed by their /64 (one host usually
//! owns a whole /64), and the per-IP connection counts only hold addresses with open
//! connections.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use governor::clock::{Clock, Reference};
use governor::middleware::NoOpMiddleware;
use governor::nanos::Nanos;
use governor::state::keyed::DashMapStateStore;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};

/// A client address as the limits see it: IPv4 as is, IPv6 by /64.
pub fn ip_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

/// governor's clock on tokio's time. In the gateway it is the monotonic clock governor's own
/// `MonotonicClock` reads (tokio's `Instant::now()` is `std::time::Instant::now()` unless a
/// test paused tokio's time); under `tokio::time::pause` the rate limits follow the paused
/// clock like every other timer of a session, so the rules built on them (the flood rule)
/// can be tested to the millisecond.
#[derive(Clone, Copy, Debug, Default)]
pub struct TokioClock;

impl Clock for TokioClock {
    type Instant = std::time::Instant;

    fn now(&self) -> std::time::Instant {
        tokio::time::Instant::now().into_std()
    }
}

fn nonzero(n: u32) -> NonZeroU32 {
    NonZeroU32::new(n).unwrap_or(NonZeroU32::MIN)
}

type KeyedLimiter<C> =
    RateLimiter<IpAddr, DashMapStateStore<IpAddr>, C, NoOpMiddleware<<C as Clock>::Instant>>;

/// A limiter whose quota a reload may change. governor cannot change a quota in place, and a
/// new limiter starts full: alone it would hand every client a fresh budget. So the limiters a
/// change replaces stay in force beside the new one until they would have refilled completely
/// (one period of their quota): a request must pass all of them. A client over its rate stays
/// refused across a reload, and the new quota applies alone one period later.
struct Requotable<L, I> {
    quota: Quota,
    current: L,
    /// Replaced limiters, each with the time it would have refilled by.
    replaced: Vec<(I, L)>,
}

impl<L, I: Reference> Requotable<L, I> {
    fn new(quota: Quota, make: impl FnOnce(Quota) -> L) -> Self {
        Requotable {
            quota,
            current: make(quota),
            replaced: Vec::new(),
        }
    }

    /// Puts a limiter of `quota` in force at `now`; the same quota changes nothing.
    fn requota(&mut self, quota: Quota, now: I, make: impl FnOnce(Quota) -> L) {
        if self.quota == quota {
            return;
        }
        let refilled_at = now + Nanos::from(self.quota.burst_size_replenished_in());
        let old = std::mem::replace(&mut self.current, make(quota));
        self.replaced.push((refilled_at, old));
        self.quota = quota;
    }

    /// Forgets the replaced limiters that have refilled by `now`.
    fn drop_refilled(&mut self, now: I) {
        self.replaced.retain(|(refilled_at, _)| *refilled_at > now);
    }

    /// The limiters a request at `now` must pass.
    fn in_force(&self, now: I) -> impl Iterator<Item = &L> {
        let replaced = self.replaced.iter();
        std::iter::once(&self.current).chain(
            replaced
                .filter(move |(refilled_at, _)| *refilled_at > now)
                .map(|(_, l)| l),
        )
    }
}

fn per_minute_quota(per_minute: u32) -> Quota {
    Quota::per_minute(nonzero(per_minute))
}

/// Per-IP handshake rate limiting (every attempt counts, refused ones included); a reload
/// changes the quota without refilling anyone's bucket (see [`Requotable`]).
pub struct HandshakeLimiter<C: Clock = TokioClock> {
    limiters: RwLock<Requotable<KeyedLimiter<C>, C::Instant>>,
    clock: C,
}

impl HandshakeLimiter {
    pub fn new(per_minute: u32) -> Self {
        Self::with_clock(per_minute, TokioClock)
    }
}

impl<C: Clock + Clone> HandshakeLimiter<C> {
    pub fn with_clock(per_minute: u32, clock: C) -> Self {
        let limiters = Requotable::new(per_minute_quota(per_minute), |q| {
            RateLimiter::dashmap_with_clock(q, clock.clone())
        });
        HandshakeLimiter {
            limiters: RwLock::new(limiters),
            clock,
        }
    }

    /// `Err(retry_after)` when `ip` is over its rate.
    pub fn check(&self, ip: IpAddr) -> Result<(), Duration> {
        let key = ip_key(ip);
        let now = self.clock.now();
        let limiters = self.limiters.read().unwrap_or_else(|p| p.into_inner());
        let mut retry_after = None;
        for limiter in limiters.in_force(now) {
            if let Err(not_until) = limiter.check_key(&key) {
                retry_after = retry_after.max(Some(not_until.wait_time_from(now)));
            }
        }
        retry_after.map_or(Ok(()), Err)
    }

    /// Applies `limits.handshakes_per_ip_per_minute` from a reload.
    pub fn set_per_minute(&self, per_minute: u32) {
        let now = self.clock.now();
        self.limiters
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .requota(per_minute_quota(per_minute), now, |q| {
                RateLimiter::dashmap_with_clock(q, self.clock.clone())
            });
    }

    /// Drops replaced limiters that have refilled and forgets addresses whose bucket is full
    /// again; call on a timer.
    pub fn prune(&self) {
        let now = self.clock.now();
        let mut limiters = self.limiters.write().unwrap_or_else(|p| p.into_inner());
        limiters.drop_refilled(now);
        for limiter in limiters.in_force(now) {
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
    }

    /// Address entries held, over all limiters in force.
    pub fn tracked(&self) -> usize {
        let limiters = self.limiters.read().unwrap_or_else(|p| p.into_inner());
        limiters.in_force(self.clock.now()).map(|l| l.len()).sum()
    }
}

/// Counts connections, globally and per IP. The gateway keeps two: its sessions
/// (`max_connections`, `max_connections_per_ip`) and its connections still before `101`
/// (`handshakes_in_flight_per_ip`).
#[derive(Debug, Default)]
pub struct ConnectionCounter {
    total: AtomicUsize,
    per_ip: Mutex<HashMap<IpAddr, usize>>,
}

/// Why a connection was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CapacityRefusal {
    Total,
    PerIp,
}

/// An admitted connection; dropping it frees the slot.
#[derive(Debug)]
pub struct ConnPermit {
    counter: Arc<ConnectionCounter>,
    ip: IpAddr,
}

impl ConnectionCounter {
    pub fn acquire(
        self: &Arc<Self>,
        ip: IpAddr,
        max_total: usize,
        max_per_ip: usize,
    ) -> Result<ConnPermit, CapacityRefusal> {
        let key = ip_key(ip);
        let mut per_ip = self.per_ip.lock().unwrap_or_else(|p| p.into_inner());
        if self.total.load(Ordering::Relaxed) >= max_total {
            return Err(CapacityRefusal::Total);
        }
        let n = per_ip.entry(key).or_insert(0);
        if *n >= max_per_ip {
            if *n == 0 {
                per_ip.remove(&key);
            }
            return Err(CapacityRefusal::PerIp);
        }
        *n += 1;
        self.total.fetch_add(1, Ordering::Relaxed);
        Ok(ConnPermit {
            counter: self.clone(),
            ip: key,
        })
    }

    pub fn total(&self) -> usize {
        self.total.load(Ordering::Relaxed)
    }
}

impl Drop for ConnPermit {
    fn drop(&mut self) {
        let mut per_ip = self
            .counter
            .per_ip
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(n) = per_ip.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                per_ip.remove(&self.ip);
            }
        }
        self.counter.total.fetch_sub(1, Ordering::Relaxed);
    }
}

type DirectLimiter = RateLimiter<NotKeyed, InMemoryState, TokioClock>;

/// One connection's token bucket (publishes, or join/leave/refresh commands); a reload
/// changes its rate without refilling it (see [`Requotable`]).
pub struct MessageLimiter {
    buckets: Requotable<DirectLimiter, std::time::Instant>,
}

fn per_second_quota(per_second: u32, burst: u32) -> Quota {
    Quota::per_second(nonzero(per_second)).allow_burst(nonzero(burst))
}

fn direct(quota: Quota) -> DirectLimiter {
    RateLimiter::direct_with_clock(quota, TokioClock)
}

impl MessageLimiter {
    pub fn new(per_second: u32, burst: u32) -> Self {
        MessageLimiter {
            buckets: Requotable::new(per_second_quota(per_second, burst), direct),
        }
    }

    /// True when one more message is allowed now by every bucket in force.
    pub fn allow(&mut self) -> bool {
        if self.buckets.replaced.is_empty() {
            // The usual case: one bucket, no clock read.
            return self.buckets.current.check().is_ok();
        }
        let now = TokioClock.now();
        self.buckets.drop_refilled(now);
        // Every bucket in force is charged, as for handshakes.
        let refusals = self.buckets.in_force(now).filter(|b| b.check().is_err());
        refusals.count() == 0
    }

    /// Applies `(per_second, burst)` (a reload).
    pub fn set_rate(&mut self, per_second: u32, burst: u32) {
        let quota = per_second_quota(per_second, burst);
        if self.buckets.quota != quota {
            self.buckets.requota(quota, TokioClock.now(), direct);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handshake_limit_is_per_ip_and_says_when_to_retry() {
        let l = HandshakeLimiter::new(2);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        assert!(l.check(a).is_ok());
        assert!(l.check(a).is_ok());
        let retry = l.check(a).expect_err("third within a minute");
        assert!(retry > Duration::from_secs(1) && retry <= Duration::from_secs(30));
        assert!(l.check(b).is_ok());
    }

    #[test]
    fn a_quota_change_keeps_what_addresses_used_until_the_old_quota_refills() {
        let clock = governor::clock::FakeRelativeClock::default();
        let l = HandshakeLimiter::with_clock(2, clock.clone());
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        assert!(l.check(a).is_ok() && l.check(a).is_ok());
        assert!(l.check(a).is_err());
        l.set_per_minute(2);
        assert!(l.check(a).is_err(), "the same quota changes nothing");
        l.set_per_minute(10);
        let retry = l.check(a).expect_err("a reload hands out no fresh budget");
        assert!(retry > Duration::from_secs(20) && retry <= Duration::from_secs(30));
        assert!(l.check(b).is_ok(), "other addresses are unaffected");
        // Half a minute on, the old quota has refilled one attempt.
        clock.advance(Duration::from_secs(30));
        assert!(l.check(a).is_ok());
        assert!(l.check(a).is_err());
        // A whole old period after the change, the old limiter is gone and the new quota
        // applies alone.
        clock.advance(Duration::from_secs(30));
        l.prune();
        assert_eq!(l.tracked(), 0, "every bucket is full again: nothing kept");
        for _ in 0..10 {
            assert!(l.check(a).is_ok());
        }
        assert!(l.check(a).is_err());
    }

    #[test]
    fn ipv6_clients_share_their_slash_64() {
        let x: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let y: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        assert_eq!(ip_key(x), ip_key(y));
        let mapped: IpAddr = "::ffff:10.0.0.1".parse().unwrap();
        assert_eq!(ip_key(mapped), "10.0.0.1".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn permits_count_and_release() {
        let c = Arc::new(ConnectionCounter::default());
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let p1 = c.acquire(ip, 10, 2).expect("first");
        let _p2 = c.acquire(ip, 10, 2).expect("second");
        assert_eq!(c.acquire(ip, 10, 2).unwrap_err(), CapacityRefusal::PerIp);
        assert_eq!(
            c.acquire("10.0.0.9".parse().unwrap(), 2, 5).unwrap_err(),
            CapacityRefusal::Total
        );
        drop(p1);
        assert_eq!(c.total(), 1);
        assert!(c.acquire(ip, 10, 2).is_ok());
    }

    #[test]
    fn per_ip_counts_key_ipv6_by_slash_64_and_forget_idle_addresses() {
        let c = Arc::new(ConnectionCounter::default());
        let a: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        let other: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        let held = c.acquire(a, usize::MAX, 1).expect("first of the /64");
        assert_eq!(
            c.acquire(b, usize::MAX, 1).unwrap_err(),
            CapacityRefusal::PerIp
        );
        let _o = c.acquire(other, usize::MAX, 1).expect("another /64");
        drop(held);
        assert_eq!(
            c.per_ip.lock().unwrap().len(),
            1,
            "only addresses holding some"
        );
        assert!(c.acquire(b, usize::MAX, 1).is_ok());
    }

    /// On paused time: no refill can happen between the checks, however busy the machine.
    #[tokio::test(start_paused = true)]
    async fn message_bucket_allows_burst_then_refuses() {
        let mut l = MessageLimiter::new(1, 3);
        assert!(l.allow() && l.allow() && l.allow());
        assert!(!l.allow());
    }

    /// The buckets refill on tokio's clock: to the millisecond under paused time.
    #[tokio::test(start_paused = true)]
    async fn buckets_refill_on_tokio_time() {
        let mut l = MessageLimiter::new(2, 1);
        assert!(l.allow());
        assert!(!l.allow());
        tokio::time::advance(Duration::from_millis(499)).await;
        assert!(!l.allow(), "one token every 500 ms: not yet");
        tokio::time::advance(Duration::from_millis(1)).await;
        assert!(l.allow());
        assert!(!l.allow());

        let h = HandshakeLimiter::new(60);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let burst = (0..).take_while(|_| h.check(a).is_ok()).count();
        assert_eq!(burst, 60);
        assert_eq!(h.check(a), Err(Duration::from_secs(1)));
        tokio::time::advance(Duration::from_millis(999)).await;
        assert_eq!(h.check(a), Err(Duration::from_millis(1)));
        tokio::time::advance(Duration::from_millis(1)).await;
        assert_eq!(h.check(a), Ok(()));
    }

    /// On paused time: no refill can happen between the checks, however busy the machine.
    #[tokio::test(start_paused = true)]
    async fn a_new_rate_does_not_refill_a_used_bucket() {
        let mut l = MessageLimiter::new(1, 3);
        assert!(l.allow() && l.allow() && l.allow());
        l.set_rate(2, 50);
        assert!(!l.allow(), "the replaced bucket is still empty");
        l.set_rate(1, 3);
        assert!(!l.allow(), "and stays checked across a second reload");
        // An unused bucket keeps its budget across a reload.
        let mut fresh = MessageLimiter::new(1, 3);
        fresh.set_rate(1, 2);
        assert!(fresh.allow() && fresh.allow());
        assert!(!fresh.allow());
    }
}
