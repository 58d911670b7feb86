//! `redis+sentinel://` URLs: a primary found through Redis Sentinel, found again after a failover.
//!
//! `redis+sentinel://[[user]:password@]host[:port][,host[:port]...]/service[/db]`: the Sentinels'
//! addresses (port 26379 unless given), the name of the monitored primary, and the database. The
//! credentials are the primary's (the Sentinels are asked without any).

use redis::ConnectionAddr;
use redis::sentinel::{SentinelClient, SentinelClientBuilder, SentinelServerType};

pub const SCHEME: &str = "redis+sentinel://";
const DEFAULT_PORT: u16 = 26379;

/// What a `redis+sentinel://` URL says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SentinelUrl {
    pub sentinels: Vec<(String, u16)>,
    pub service: String,
    pub db: i64,
    pub username: Option<String>,
    pub password: Option<String>,
}

impl SentinelUrl {
    /// Reads `url`, or says what is wrong with it.
    pub fn parse(url: &str) -> Result<Self, String> {
        let rest = url.strip_prefix(SCHEME).ok_or_else(|| format!("must start with {SCHEME}"))?;
        let (authority, path) = rest.split_once('/').ok_or("must name the service: redis+sentinel://host:26379/service")?;
        let (credentials, hosts) = match authority.rsplit_once('@') {
            Some((credentials, hosts)) => (Some(credentials), hosts),
            None => (None, authority),
        };
        let (username, password) = match credentials.map(|c| c.split_once(':').unwrap_or((c, ""))) {
            Some((user, password)) => {
                ((!user.is_empty()).then(|| user.to_string()), (!password.is_empty()).then(|| password.to_string()))
            }
            None => (None, None),
        };
        let sentinels = hosts
            .split(',')
            .map(|host| match host.rsplit_once(':') {
                Some((name, port)) => port.parse().map(|port| (name.to_string(), port)).map_err(|_| format!("bad port in {host:?}")),
                None => Ok((host.to_string(), DEFAULT_PORT)),
            })
            .collect::<Result<Vec<_>, _>>()?;
        if sentinels.iter().any(|(host, _)| host.is_empty()) {
            return Err("every Sentinel needs a host".into());
        }
        let (service, db) = match path.split_once('/') {
            Some((service, db)) => (service, db.parse().map_err(|_| format!("bad database number {db:?}"))?),
            None => (path, 0),
        };
        if service.is_empty() {
            return Err("must name the service: redis+sentinel://host:26379/service".into());
        }
        Ok(Self { sentinels, service: service.to_string(), db, username, password })
    }

    /// A client that asks the Sentinels where the primary is now.
    pub fn client(&self) -> redis::RedisResult<SentinelClient> {
        let nodes = self.sentinels.iter().map(|(host, port)| ConnectionAddr::Tcp(host.clone(), *port));
        let mut builder = SentinelClientBuilder::new(nodes, &self.service, SentinelServerType::Master)?.set_client_to_redis_db(self.db);
        if let Some(username) = &self.username {
            builder = builder.set_client_to_redis_username(username);
        }
        if let Some(password) = &self.password {
            builder = builder.set_client_to_redis_password(password);
        }
        builder.build()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sentinel_url_names_the_sentinels_the_service_the_database_and_the_primarys_credentials() {
        let url = SentinelUrl::parse("redis+sentinel://app:s3cret@10.0.0.1,10.0.0.2:5000/mymaster/2").unwrap();
        assert_eq!(url.sentinels, vec![("10.0.0.1".to_string(), 26379), ("10.0.0.2".to_string(), 5000)]);
        assert_eq!((url.service.as_str(), url.db), ("mymaster", 2));
        assert_eq!((url.username.as_deref(), url.password.as_deref()), (Some("app"), Some("s3cret")));
        let plain = SentinelUrl::parse("redis+sentinel://127.0.0.1:26379/hs").unwrap();
        assert_eq!((plain.db, plain.username, plain.password), (0, None, None));
    }

    #[test]
    fn a_sentinel_url_without_a_service_or_with_a_bad_port_is_refused() {
        assert!(SentinelUrl::parse("redis+sentinel://127.0.0.1:26379").is_err());
        assert!(SentinelUrl::parse("redis+sentinel://127.0.0.1:26379/").is_err());
        assert!(SentinelUrl::parse("redis+sentinel://127.0.0.1:x/hs").is_err());
        assert!(SentinelUrl::parse("redis+sentinel://127.0.0.1/hs/zero").is_err());
    }
}
