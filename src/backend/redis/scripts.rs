//! The Lua scripts, and calls to them by EVALSHA: loaded on a server once, reloaded on NOSCRIPT (a
//! restarted or flushed server). Calls are built here rather than by redis-rs's `ScriptInvocation` so
//! that the event-loop connection can send the same bytes itself.

use std::sync::LazyLock;

use redis::{Cmd, ConnectionLike, ErrorKind, FromRedisValue, RedisResult, Script, ServerErrorKind, ToRedisArgs};

use crate::backend::redis::connections::Shared;

pub struct LuaScript {
    source: &'static str,
    script: Script,
}

impl LuaScript {
    fn new(source: &'static str) -> Self {
        Self { source, script: Script::new(source) }
    }

    pub fn source(&self) -> &'static str {
        self.source
    }

    /// An EVALSHA of this script on `keys`; arguments follow with [`Call::arg`].
    pub fn call(&'static self, keys: &[String]) -> Call {
        let mut cmd = redis::cmd("EVALSHA");
        cmd.arg(self.script.get_hash()).arg(keys.len()).arg(keys);
        Call { script: self, cmd }
    }
}

/// Decides a request against every window and the concurrency lease, all or nothing.
pub static ACQUIRE: LazyLock<LuaScript> = LazyLock::new(|| LuaScript::new(include_str!("scripts/acquire.lua")));
/// Settles a request's real cost, gives a reservation back, releases a lease.
pub static ADJUST: LazyLock<LuaScript> = LazyLock::new(|| LuaScript::new(include_str!("scripts/adjust.lua")));
/// Takes back leases whose client gave up on them (a timed-out acquire, a release not sent).
pub static RECLAIM: LazyLock<LuaScript> = LazyLock::new(|| LuaScript::new(include_str!("scripts/reclaim.lua")));
/// Extends the leases a live process still holds.
pub static RENEW: LazyLock<LuaScript> = LazyLock::new(|| LuaScript::new(include_str!("scripts/renew.lua")));

/// One script call, ready to run on any connection.
pub struct Call {
    script: &'static LuaScript,
    cmd: Cmd,
}

fn is_noscript(result: &RedisResult<impl Sized>) -> bool {
    matches!(result, Err(err) if err.kind() == ErrorKind::Server(ServerErrorKind::NoScript))
}

impl Call {
    pub fn arg<T: ToRedisArgs>(&mut self, arg: T) -> &mut Self {
        self.cmd.arg(arg);
        self
    }

    /// The request's bytes on the wire.
    pub fn packed(&self) -> Vec<u8> {
        self.cmd.get_packed_command()
    }

    pub fn run<T: FromRedisValue>(&self, connection: &mut dyn ConnectionLike) -> RedisResult<T> {
        let result = self.cmd.query(connection);
        if is_noscript(&result) {
            self.script.script.load(connection)?;
            return self.cmd.query(connection);
        }
        result
    }

    pub async fn run_async<T: FromRedisValue>(&self, connection: &mut Shared) -> RedisResult<T> {
        let result = self.cmd.query_async(connection).await;
        if is_noscript(&result) {
            self.script.script.load_async(connection).await?;
            return self.cmd.query_async(connection).await;
        }
        result
    }
}
