//! The kinds of Redis deployment a backend talks to: one server, a primary found through Sentinel
//! (asked again for each new connection, so one made after a failover reaches the new primary), or a
//! Cluster (whose client finds each key's node, following MOVED/ASK). Every limiter's keys share one
//! hash tag, so each script call goes to the one node that holds them all.


use redis::aio::{ConnectionLike as AsyncConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::{ClusterClient, ClusterConnection};
use redis::sentinel::SentinelClient;
use redis::{Cmd, ConnectionInfo, ConnectionLike, Pipeline, RedisFuture, RedisResult, Value};

use crate::backend::redis::backend::Timeouts;
use crate::backend::redis::tcp_connection::TcpConnection;

/// Where a backend's Redis is (one value per backend: its size does not matter).
#[allow(clippy::large_enum_variant)]
pub enum Server {
    Single(redis::Client),
    /// The Sentinels' client twice: one for blocking connections, one for the runtime's.
    Sentinel { blocking: std::sync::Mutex<SentinelClient>, shared: tokio::sync::Mutex<SentinelClient> },
    Cluster(ClusterClient),
}

/// A connection for a blocking call, kept in the backend's pool.
pub enum Blocking {
    /// Plain TCP to one server: ours, which waits for an answer awake at first (see `TcpConnection`).
    Tcp(TcpConnection),
    /// TLS or a Unix socket to one server, through redis-rs.
    TlsOrUnix(redis::Connection),
    Cluster(Box<ClusterConnection>),
}

/// The runtime's connection, shared by every task (both kinds multiplex and reconnect by themselves).
#[derive(Clone)]
pub enum Shared {
    Single(ConnectionManager),
    Cluster(redis::cluster_async::ClusterConnection),
}

impl Server {
    /// The address of a single server, for an event loop's connection; `None` for a Cluster.
    pub fn single_info(&self) -> Option<&ConnectionInfo> {
        match self {
            Server::Single(client) => Some(client.get_connection_info()),
            Server::Sentinel { .. } | Server::Cluster(_) => None,
        }
    }

    /// Where the primary is now, as the Sentinels say (`None` for other servers).
    pub async fn primary(&self) -> RedisResult<Option<String>> {
        match self {
            Server::Sentinel { shared, .. } => {
                let client = shared.lock().await.async_get_client().await?;
                Ok(Some(client.get_connection_info().addr().to_string()))
            }
            _ => Ok(None),
        }
    }

    /// Whether connections must be made again after a failure (to find a promoted primary).
    pub fn follows_failovers(&self) -> bool {
        matches!(self, Server::Sentinel { .. })
    }

    pub fn connect_blocking(&self, timeouts: Timeouts) -> RedisResult<Blocking> {
        let single = |client: &redis::Client| -> RedisResult<Blocking> {
            if let Some(opened) = TcpConnection::open(client.get_connection_info(), timeouts.connect, timeouts.command, timeouts.spin) {
                return opened.map(Blocking::Tcp);
            }
            let connection = client.get_connection_with_timeout(timeouts.connect)?;
            connection.set_read_timeout(Some(timeouts.command))?;
            connection.set_write_timeout(Some(timeouts.command))?;
            Ok(Blocking::TlsOrUnix(connection))
        };
        match self {
            Server::Single(client) => single(client),
            Server::Sentinel { blocking, .. } => single(&blocking.lock().unwrap_or_else(|p| p.into_inner()).get_client()?),
            Server::Cluster(client) => {
                let connection = client.get_connection()?;
                connection.set_read_timeout(Some(timeouts.command))?;
                connection.set_write_timeout(Some(timeouts.command))?;
                Ok(Blocking::Cluster(Box::new(connection)))
            }
        }
    }

    /// The runtime's connection; must be called on the runtime. A single server's connects on first
    /// use; a Cluster's learns the slot map now.
    pub async fn connect_shared(&self, timeouts: Timeouts) -> RedisResult<Shared> {
        // No retries inside the manager: a failed call returns at once and the backend's pause
        // decides when to try again; the manager reconnects on the next call.
        let config = ConnectionManagerConfig::new()
            .set_number_of_retries(0)
            .set_connection_timeout(Some(timeouts.connect))
            .set_response_timeout(Some(timeouts.command));
        match self {
            Server::Single(client) => Ok(Shared::Single(ConnectionManager::new_lazy_with_config(client.clone(), config)?)),
            Server::Sentinel { shared, .. } => {
                let client = shared.lock().await.async_get_client().await?;
                Ok(Shared::Single(ConnectionManager::new_lazy_with_config(client, config)?))
            }
            Server::Cluster(client) => Ok(Shared::Cluster(client.get_async_connection().await?)),
        }
    }
}

/// A Cluster client with the backend's timeouts and few retries (the backend's pause handles outages).
pub fn cluster_client(url: &str, timeouts: Timeouts) -> RedisResult<ClusterClient> {
    ClusterClient::builder([url])
        .connection_timeout(timeouts.connect)
        .response_timeout(timeouts.command)
        .retries(2)
        .build()
}

impl Blocking {
    pub fn as_connection(&mut self) -> &mut dyn ConnectionLike {
        match self {
            Blocking::Tcp(connection) => connection,
            Blocking::TlsOrUnix(connection) => connection,
            Blocking::Cluster(connection) => connection.as_mut(),
        }
    }
}

impl AsyncConnectionLike for Shared {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Shared::Single(connection) => connection.req_packed_command(cmd),
            Shared::Cluster(connection) => connection.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(&'a mut self, cmd: &'a Pipeline, offset: usize, count: usize) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Shared::Single(connection) => connection.req_packed_commands(cmd, offset, count),
            Shared::Cluster(connection) => connection.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Shared::Single(connection) => connection.get_db(),
            Shared::Cluster(connection) => connection.get_db(),
        }
    }
}

