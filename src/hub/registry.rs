//! Every session on this node by user: the count `limits.max_connections_per_user` caps and
//! the handles the admin API's disconnect closes, in one map. A session's place is taken at
//! its handshake ([`Hub::admit`], which checks the cap and reserves in the same step) and
//! holds its handle once it runs; removing a session is O(1).

use std::collections::HashMap;
use std::sync::Arc;

use super::{lock, Hub, SessionHandle};
use crate::broker::SessionId;
use crate::metrics::Protocol;

/// Every session on this node by user, from its handshake on: the count
/// `limits.max_connections_per_user` caps, and the handles the admin API's disconnect closes.
/// A place is `None` from the handshake that took it until its session registers; then it
/// holds the session's handle and protocol (whose connection gauge counts it).
pub(super) type SessionsByUser =
    HashMap<Arc<str>, HashMap<SessionId, Option<(SessionHandle, Protocol)>>>;

/// Sessions by the other names they answer to for disconnects: a Pusher socket signed in as a
/// user is closed by `/api/disconnect` for that user and by the app's `terminate_connections`,
/// though its place is under its own `socket_id` (no per-user cap applies to it).
#[derive(Default)]
pub(super) struct Aliases {
    by_name: HashMap<Arc<str>, HashMap<SessionId, SessionHandle>>,
    of_session: HashMap<SessionId, Vec<Arc<str>>>,
}

impl Aliases {
    fn remove(&mut self, id: SessionId) {
        for name in self.of_session.remove(&id).unwrap_or_default() {
            if let Some(sessions) = self.by_name.get_mut(&name) {
                sessions.remove(&id);
                if sessions.is_empty() {
                    self.by_name.remove(&name);
                }
            }
        }
    }
}

/// The user already has `limits.max_connections_per_user` sessions (or handshakes about to
/// become sessions) on this node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UserAtCap;

/// A session's place among its user's sessions, taken at the handshake. Dropping it frees
/// the place (and forgets the session, had it registered and not yet unregistered): a
/// handshake that never becomes a session gives its place back.
pub struct SessionPlace {
    hub: Arc<Hub>,
    user: Arc<str>,
    id: SessionId,
    protocol: Protocol,
}

impl SessionPlace {
    /// The id of the session this place is for.
    pub fn id(&self) -> SessionId {
        self.id
    }
}

impl Drop for SessionPlace {
    fn drop(&mut self) {
        self.hub.remove_session(&self.user, self.id);
    }
}

impl Hub {
    /// Takes a place for a new session of `user`, unless the user already has `max` places
    /// on this node. Checked and taken under one lock: concurrent handshakes of one user never
    /// share the last place.
    pub fn admit(self: &Arc<Self>, user: &Arc<str>, max: usize) -> Result<SessionPlace, UserAtCap> {
        let mut by_user = lock(&self.sessions_by_user);
        let places = by_user.entry(user.clone()).or_default();
        if places.len() >= max {
            if places.is_empty() {
                by_user.remove(user);
            }
            return Err(UserAtCap);
        }
        let id = self.next_session_id();
        places.insert(id, None);
        Ok(SessionPlace {
            hub: self.clone(),
            user: user.clone(),
            id,
            protocol: Protocol::Native,
        })
    }

    /// Takes a place for a session of `protocol` whose user is named after its own id (a
    /// Pusher socket, which is nobody until it signs in): one place per name, so no cap applies.
    pub fn admit_unnamed(
        self: &Arc<Self>,
        protocol: Protocol,
        name: impl FnOnce(SessionId) -> Arc<str>,
    ) -> SessionPlace {
        let id = self.next_session_id();
        let user = name(id);
        lock(&self.sessions_by_user)
            .entry(user.clone())
            .or_default()
            .insert(id, None);
        SessionPlace {
            hub: self.clone(),
            user,
            id,
            protocol,
        }
    }

    /// Makes a session known (for the admin API and the connection gauge) in the place its
    /// handshake took; `handle.id` is the place's id.
    pub fn register(&self, place: &SessionPlace, handle: &SessionHandle) {
        debug_assert_eq!(place.id, handle.id);
        let mut by_user = lock(&self.sessions_by_user);
        let entry = by_user
            .entry(place.user.clone())
            .or_default()
            .entry(place.id)
            .or_default();
        if entry.replace((handle.clone(), place.protocol)).is_none() {
            self.metrics.connections_of(place.protocol).inc();
        }
    }

    /// Forgets a session as soon as it stops serving; its place is free for the user's next
    /// handshake.
    pub fn unregister(&self, handle: &SessionHandle) {
        self.remove_session(&handle.user, handle.id);
    }

    /// Makes a session answer to `names` (instead of the names it had) for disconnects.
    pub fn set_aliases(&self, handle: &SessionHandle, names: Vec<Arc<str>>) {
        let mut aliases = lock(&self.aliases);
        aliases.remove(handle.id);
        for name in &names {
            aliases
                .by_name
                .entry(name.clone())
                .or_default()
                .insert(handle.id, handle.clone());
        }
        aliases.of_session.insert(handle.id, names);
    }

    /// Frees the place `id` of `user`, if it is still taken.
    fn remove_session(&self, user: &Arc<str>, id: SessionId) {
        lock(&self.aliases).remove(id);
        let mut by_user = lock(&self.sessions_by_user);
        let Some(places) = by_user.get_mut(user) else {
            return;
        };
        if let Some(Some((_, protocol))) = places.remove(&id) {
            self.metrics.connections_of(protocol).dec();
        }
        if places.is_empty() {
            by_user.remove(user);
        }
    }

    /// Closes every session of `user` on this node with `code` (the sessions that answer to
    /// it as an alias too); returns how many.
    pub fn disconnect_local_sessions(&self, user: &str, code: u16) -> usize {
        let mut handles: Vec<SessionHandle> = lock(&self.sessions_by_user)
            .get(user)
            .map(|places| places.values().flatten().map(|(h, _)| h.clone()).collect())
            .unwrap_or_default();
        if let Some(aliased) = lock(&self.aliases).by_name.get(user) {
            handles.extend(aliased.values().cloned());
        }
        handles.iter().filter(|h| h.ctl.close(code)).count()
    }

    /// Sessions registered on this node.
    pub fn session_count(&self) -> usize {
        lock(&self.sessions_by_user)
            .values()
            .flat_map(HashMap::values)
            .flatten()
            .count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hub::{lock, SessionCtl};
    use crate::metrics::Metrics;
    use crate::protocol::close;
    use tokio::sync::mpsc;
    use tokio_util::sync::CancellationToken;

    fn hub() -> Arc<Hub> {
        Hub::new(
            Arc::new(crate::broker::MemoryBroker::for_tests()),
            Arc::new(Metrics::new()),
            16,
            1,
        )
    }

    /// A session registered in `place`.
    fn session(hub: &Hub, place: &SessionPlace, user: &Arc<str>) -> SessionHandle {
        let (tx, _rx) = mpsc::channel(4);
        let handle = SessionHandle {
            id: place.id(),
            user: user.clone(),
            tx,
            ctl: Arc::new(SessionCtl::new(CancellationToken::new())),
        };
        hub.register(place, &handle);
        handle
    }

    #[test]
    fn places_per_user_are_capped_and_freed_by_unregister_or_drop() {
        let hub = hub();
        let alice: Arc<str> = Arc::from("alice");
        let bob: Arc<str> = Arc::from("bob");
        let first = hub.admit(&alice, 2).expect("first");
        let second = hub.admit(&alice, 2).expect("second (not yet a session)");
        assert_eq!(hub.admit(&alice, 2).err(), Some(UserAtCap));
        let _bob = hub.admit(&bob, 2).expect("another user");
        let a1 = session(&hub, &first, &alice);
        assert_eq!(hub.session_count(), 1);
        assert_eq!(hub.metrics.connections.get(), 1);

        // A handshake that never became a session gives its place back.
        drop(second);
        let third = hub.admit(&alice, 2).expect("the freed place");
        // A session frees its place when it unregisters, before its place is dropped.
        hub.unregister(&a1);
        assert_eq!(hub.session_count(), 0);
        assert_eq!(hub.metrics.connections.get(), 0);
        let fourth = hub
            .admit(&alice, 2)
            .expect("the unregistered session's place");
        drop(first); // after unregister: nothing left to free
        assert_eq!(hub.admit(&alice, 2).err(), Some(UserAtCap));
        drop((third, fourth));
        assert!(
            !lock(&hub.sessions_by_user).contains_key(&alice),
            "a user without places is forgotten"
        );
    }

    #[test]
    fn concurrent_handshakes_of_one_user_never_share_the_last_place() {
        let hub = hub();
        let alice: Arc<str> = Arc::from("alice");
        let _held: Vec<SessionPlace> = (0..4).map(|_| hub.admit(&alice, 5).unwrap()).collect();
        let barrier = std::sync::Barrier::new(8);
        let won: Vec<SessionPlace> = std::thread::scope(|s| {
            let tries: Vec<_> = (0..8)
                .map(|_| {
                    s.spawn(|| {
                        barrier.wait();
                        hub.admit(&alice, 5).ok()
                    })
                })
                .collect();
            tries
                .into_iter()
                .filter_map(|t| t.join().expect("thread"))
                .collect()
        });
        assert_eq!(won.len(), 1);
    }

    #[test]
    fn disconnect_closes_every_registered_session_of_the_user_once() {
        let hub = hub();
        let alice: Arc<str> = Arc::from("alice");
        let bob: Arc<str> = Arc::from("bob");
        let places: Vec<SessionPlace> = (0..3).map(|_| hub.admit(&alice, 9).unwrap()).collect();
        let handles: Vec<SessionHandle> = places[..2]
            .iter()
            .map(|p| session(&hub, p, &alice))
            .collect();
        let bob_place = hub.admit(&bob, 9).unwrap();
        let bob_handle = session(&hub, &bob_place, &bob);
        assert_eq!(hub.disconnect_local_sessions("alice", close::KICKED), 2);
        assert!(handles.iter().all(|h| h.ctl.code() == close::KICKED));
        assert!(!bob_handle.ctl.token().is_cancelled());
        assert_eq!(
            hub.disconnect_local_sessions("alice", close::KICKED),
            0,
            "already closing"
        );
        assert_eq!(hub.disconnect_local_sessions("nobody", close::KICKED), 0);
    }

    #[test]
    fn a_session_is_closed_by_its_aliases_until_it_unregisters() {
        let hub = hub();
        let anon: Arc<str> = Arc::from("@pusher:1.1");
        let place = hub.admit(&anon, 9).unwrap();
        let handle = session(&hub, &place, &anon);
        hub.set_aliases(&handle, vec![Arc::from("alice"), Arc::from("@app/alice")]);
        hub.set_aliases(&handle, vec![Arc::from("bob")]);
        assert_eq!(hub.disconnect_local_sessions("alice", close::KICKED), 0);
        assert_eq!(hub.disconnect_local_sessions("bob", close::KICKED), 1);
        hub.unregister(&handle);
        assert!(lock(&hub.aliases).by_name.is_empty());
        assert!(lock(&hub.aliases).of_session.is_empty());
    }
}
