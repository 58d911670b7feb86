//! The Lua scripts and how they are called. On Redis 7.0+ they are one Functions library (FCALL): it
//! lives in the server's data, so it is replicated, kept by persistence and present on a replica
//! promoted by a failover; on older servers each script is run by EVALSHA. Either way a server that
//! lost them (a restart without persistence, a flush) gets them again, and the call is repeated,
//! without an error reaching the caller. `common.lua` is written once: the library's head, or put
//! before each script for EVALSHA. Each script is a chunk that returns its function of KEYS and ARGV,
//! so what it defines outside that function is made when the library loads, not at every call.
//!
//! Calls are built here rather than by redis-rs's `ScriptInvocation` so that the event-loop
//! connection can send the same bytes itself.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock, OnceLock};

use redis::{Arg, Cmd, ConnectionLike, ErrorKind, FromRedisValue, RedisError, RedisResult, Script, ServerErrorKind, ToRedisArgs};

use crate::backend::redis::connections::Shared;

const COMMON: &str = include_str!("scripts/common.lua");

pub struct LuaScript {
    /// Its name in the library.
    name: &'static str,
    body: &'static str,
    /// The script for EVALSHA: `common.lua`, then its chunk, whose function it calls...
    standalone: String,
    /// ...and its SHA-1.
    hash: String,
    /// Its name as a function of the library, made once.
    function: OnceLock<String>,
}

impl LuaScript {
    fn new(name: &'static str, body: &'static str) -> Self {
        let standalone = format!("{COMMON}\nlocal run = (function()\n{body}\nend)()\nbind()\nreturn run(KEYS, ARGV)\n");
        let hash = Script::new(&standalone).get_hash().to_string();
        Self { name, body, standalone, hash, function: OnceLock::new() }
    }

    /// Its name as a function of the library (FCALL).
    fn function(&self) -> &str {
        self.function.get_or_init(|| format!("{}_{}", LIBRARY.name, self.name))
    }

    /// A call of this script on `keys` in the way `dialect` says the server takes; arguments follow
    /// with [`Call::arg`].
    pub fn call(&'static self, dialect: &Arc<Dialect>, keys: &[String]) -> Call {
        let functions = dialect.functions();
        let mut cmd = if functions { redis::cmd("FCALL") } else { redis::cmd("EVALSHA") };
        if functions {
            cmd.arg(self.function());
        } else {
            cmd.arg(&self.hash);
        }
        cmd.arg(keys.len()).arg(keys);
        Call { script: self, cmd, functions, dialect: Arc::clone(dialect) }
    }
}

/// The library: every script as a function, `common.lua` once at its head. Its name carries a hash of
/// its source, so limiters of two holysheep versions on one server each call their own.
struct Library {
    name: String,
    source: String,
}

static LIBRARY: LazyLock<Library> = LazyLock::new(|| {
    let scripts = [&*ACQUIRE, &*ADJUST, &*RECLAIM, &*RENEW, &*LEAVE, &*LOGS, &*BREAKER];
    let functions: String = scripts.iter().map(|s| format!("local {} = (function()\n{}\nend)()\n", s.name, s.body)).collect();
    let hash = Script::new(&format!("{COMMON}{functions}")).get_hash().to_string();
    let name = format!("holysheep_{}", &hash[..12]);
    // `bind` first: the API a script uses is there only once a function runs (see common.lua).
    let registered: String = scripts
        .iter()
        .map(|s| format!("redis.register_function('{name}_{0}', function(KEYS, ARGV) bind() return {0}(KEYS, ARGV) end)\n", s.name))
        .collect();
    let source = format!("#!lua name={name}\n{COMMON}\n{functions}{registered}");
    Library { name, source }
});

/// Whether a server takes Functions (Redis 7.0+): assumed until it says it does not know FCALL.
#[derive(Debug)]
pub struct Dialect {
    no_functions: AtomicBool,
}

impl Default for Dialect {
    fn default() -> Self {
        Self { no_functions: AtomicBool::new(false) }
    }
}

impl Dialect {
    pub fn functions(&self) -> bool {
        !self.no_functions.load(Ordering::Relaxed)
    }

    /// The command that puts every script on the server in this dialect (FUNCTION LOAD REPLACE of the
    /// library, or SCRIPT LOAD of `script`).
    pub fn load_command(&self, script: &LuaScript) -> Cmd {
        if self.functions() {
            redis::cmd("FUNCTION").arg("LOAD").arg("REPLACE").arg(&LIBRARY.source).clone()
        } else {
            redis::cmd("SCRIPT").arg("LOAD").arg(&script.standalone).clone()
        }
    }

    /// What `err` says about the scripts: `Lost` when the server lacks them now, `Unsupported` when it
    /// has no Functions at all (this dialect then turns to EVALSHA from now on).
    pub fn missing(&self, err: &RedisError) -> Option<Missing> {
        let detail = err.detail().unwrap_or("");
        if matches!(err.kind(), ErrorKind::Server(ServerErrorKind::NoScript)) || detail.starts_with("Function not found") {
            return Some(Missing::Lost);
        }
        // Redis 7 quotes the command 'FCALL', Redis 6 `FCALL`.
        let named = |command: &str| detail.to_ascii_uppercase().contains(command);
        if self.functions() && detail.starts_with("unknown command") && (named("FCALL") || named("FUNCTION")) {
            self.no_functions.store(true, Ordering::Relaxed);
            return Some(Missing::Unsupported);
        }
        None
    }
}

/// Why a call found no script to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Missing {
    /// The server lost them (restarted, flushed, a replica promoted before they reached it).
    Lost,
    /// The server has no Functions (before 7.0).
    Unsupported,
}

/// Decides a request against every window and the concurrency lease, all or nothing.
pub static ACQUIRE: LazyLock<LuaScript> = LazyLock::new(|| LuaScript::new("acquire", include_str!("scripts/acquire.lua")));
/// Settles a request's real cost, gives a reservation back, releases a lease.
pub static ADJUST: LazyLock<LuaScript> = LazyLock::new(|| LuaScript::new("adjust", include_str!("scripts/adjust.lua")));
/// Takes back leases whose client gave up on them (a timed-out acquire, a release not sent).
pub static RECLAIM: LazyLock<LuaScript> = LazyLock::new(|| LuaScript::new("reclaim", include_str!("scripts/reclaim.lua")));
/// Extends the leases a live process still holds.
pub static RENEW: LazyLock<LuaScript> = LazyLock::new(|| LuaScript::new("renew", include_str!("scripts/renew.lua")));
/// Takes a waiter that gave up out of the line for concurrency slots.
pub static LEAVE: LazyLock<LuaScript> = LazyLock::new(|| LuaScript::new("leave", include_str!("scripts/leave.lua")));
/// Reads exact windows' logs as they stand.
pub static LOGS: LazyLock<LuaScript> = LazyLock::new(|| LuaScript::new("logs", include_str!("scripts/logs.lua")));
/// The fleet's circuit breaker: its state machine on Redis's clock (src/backend/redis/breaker.rs).
pub static BREAKER: LazyLock<LuaScript> = LazyLock::new(|| LuaScript::new("breaker", include_str!("scripts/breaker.lua")));

/// One script call, ready to run on any connection.
pub struct Call {
    script: &'static LuaScript,
    cmd: Cmd,
    /// Whether `cmd` is an FCALL (else an EVALSHA).
    functions: bool,
    dialect: Arc<Dialect>,
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

    /// This call again the way the server takes it now: after `missing` turned the dialect to
    /// EVALSHA, the FCALL is rewritten (same keys and arguments).
    pub fn again(&self) -> Call {
        if self.functions == self.dialect.functions() {
            return Call { script: self.script, cmd: self.cmd.clone(), functions: self.functions, dialect: Arc::clone(&self.dialect) };
        }
        let mut cmd = redis::cmd("EVALSHA");
        cmd.arg(&self.script.hash);
        // The FCALL's name and function go; the key count, keys and arguments stay.
        for arg in self.cmd.args_iter().skip(2) {
            if let Arg::Simple(bytes) = arg {
                cmd.arg(bytes);
            }
        }
        Call { script: self.script, cmd, functions: false, dialect: Arc::clone(&self.dialect) }
    }

    /// The command that loads what this call needs.
    pub fn load_command(&self) -> Cmd {
        self.dialect.load_command(self.script)
    }

    pub fn run<T: FromRedisValue>(&self, connection: &mut dyn ConnectionLike) -> RedisResult<T> {
        let result = self.cmd.query(connection);
        match &result {
            Err(err) if self.dialect.missing(err).is_some() => {
                let again = self.again();
                again.load_command().exec(connection)?;
                again.cmd.query(connection)
            }
            _ => result,
        }
    }

    pub async fn run_async<T: FromRedisValue>(&self, connection: &mut Shared) -> RedisResult<T> {
        let result = self.cmd.query_async(connection).await;
        match &result {
            Err(err) if self.dialect.missing(err).is_some() => {
                let again = self.again();
                again.load_command().exec_async(connection).await?;
                again.cmd.query_async(connection).await
            }
            _ => result,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_library_holds_common_once_and_registers_every_script() {
        let source = &LIBRARY.source;
        assert!(source.starts_with("#!lua name=holysheep_"));
        assert_eq!(source.matches("local function redis_now()").count(), 1);
        for name in ["acquire", "adjust", "reclaim", "renew", "leave", "logs", "breaker"] {
            assert!(source.contains(&format!("redis.register_function('{}_{name}', function(KEYS, ARGV) bind() return {name}(KEYS, ARGV) end)", LIBRARY.name)), "{name}");
        }
    }

    #[test]
    fn an_fcall_is_rewritten_as_an_evalsha_with_the_same_keys_and_arguments() {
        let dialect = Arc::new(Dialect::default());
        let mut call = ACQUIRE.call(&dialect, &["k1".into(), "k2".into()]);
        call.arg("now").arg(7);
        let unknown = RedisError::from((ErrorKind::Server(ServerErrorKind::ResponseError), "ERR", "unknown command 'FCALL', with args beginning with: ".to_string()));
        assert_eq!(dialect.missing(&unknown), Some(Missing::Unsupported));
        let again = call.again();
        let expected = redis::cmd("EVALSHA").arg(&ACQUIRE.hash).arg(2).arg("k1").arg("k2").arg("now").arg(7).get_packed_command();
        assert_eq!(again.packed(), expected);
        assert!(!dialect.functions());
    }
}
