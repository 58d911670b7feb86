//! The Lua scripts, loaded once per server and then run by EVALSHA (redis-rs reloads on NOSCRIPT).

use std::sync::LazyLock;

use redis::Script;

/// Decides a request against every window and the concurrency lease, all or nothing.
pub static ACQUIRE: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("scripts/acquire.lua")));
/// Settles a request's real cost, gives a reservation back, releases a lease.
pub static ADJUST: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("scripts/adjust.lua")));
/// Extends the leases a live process still holds.
pub static RENEW: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("scripts/renew.lua")));
