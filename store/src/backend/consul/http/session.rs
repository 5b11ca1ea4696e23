//! The session calls (create, renew, destroy) and the Raft leader query.

use bytes::Bytes;
use reqwest::{Method, StatusCode};
use serde::Deserialize;

use crate::backend::consul::error::ConsulError;
use crate::backend::consul::session::SessionRequest;

use super::Http;

/// The answer of `/v1/session/create`.
#[derive(Debug, Deserialize)]
struct SessionCreated {
    #[serde(rename = "ID", default)]
    id: Option<String>,
}

/// What anykv reads of a session (`session/info`, `session/renew`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct SessionInfo {
    #[serde(default)]
    pub(crate) name: String,
    /// As it was created (`"10000ms"`), or empty for no TTL.
    #[serde(rename = "TTL", default)]
    pub(crate) ttl: String,
    #[serde(default)]
    pub(crate) behavior: String,
}

/// The first session of a `session/info` or `session/renew` answer (a list;
/// empty or `null` when Consul does not know the session).
fn first_session(answer: &super::Answer, what: &str) -> Result<Option<SessionInfo>, ConsulError> {
    let sessions: Option<Vec<SessionInfo>> = answer.parse(what)?;
    Ok(sessions.and_then(|s| s.into_iter().next()))
}

impl Http {
    /// Creates a session; returns its ID.
    pub(crate) async fn session_create(
        &self,
        request: &SessionRequest<'_>,
    ) -> Result<String, ConsulError> {
        let url = self.api_url("session/create")?;
        let body = serde_json::to_vec(request).map_err(|e| {
            ConsulError::Protocol(format!("cannot encode the session request: {e}"))
        })?;
        let answer = self
            .send(
                Method::PUT,
                url,
                Some(Bytes::from(body)),
                self.inner.request_timeout,
            )
            .await?;
        if answer.status != StatusCode::OK {
            return Err(answer.error());
        }
        answer
            .parse::<SessionCreated>("session/create")?
            .id
            .filter(|id| !id.is_empty())
            .ok_or_else(|| ConsulError::Protocol("session/create returned no ID".into()))
    }

    /// Renews a session. `Ok(false)` if Consul no longer knows it.
    pub(crate) async fn session_renew(&self, id: &str) -> Result<bool, ConsulError> {
        let url = self.api_url(&format!("session/renew/{id}"))?;
        let answer = self
            .send(Method::PUT, url, None, self.inner.request_timeout)
            .await?;
        match answer.status {
            StatusCode::OK => Ok(true),
            StatusCode::NOT_FOUND => Ok(false),
            _ => Err(answer.error()),
        }
    }

    /// Renews a session and returns what Consul says of it; `None` if Consul
    /// no longer knows it.
    pub(crate) async fn session_renew_info(
        &self,
        id: &str,
    ) -> Result<Option<SessionInfo>, ConsulError> {
        let url = self.api_url(&format!("session/renew/{id}"))?;
        let answer = self
            .send(Method::PUT, url, None, self.inner.request_timeout)
            .await?;
        match answer.status {
            StatusCode::OK => first_session(&answer, "session/renew"),
            StatusCode::NOT_FOUND => Ok(None),
            _ => Err(answer.error()),
        }
    }

    /// Reads a session; `None` if Consul does not know it.
    pub(crate) async fn session_info(&self, id: &str) -> Result<Option<SessionInfo>, ConsulError> {
        let url = self.api_url(&format!("session/info/{id}"))?;
        let answer = self
            .send(Method::GET, url, None, self.inner.request_timeout)
            .await?;
        match answer.status {
            StatusCode::OK => first_session(&answer, "session/info"),
            StatusCode::NOT_FOUND => Ok(None),
            _ => Err(answer.error()),
        }
    }

    /// Destroys a session: Consul deletes the keys it holds (behavior=delete).
    pub(crate) async fn session_destroy(&self, id: &str) -> Result<(), ConsulError> {
        let url = self.api_url(&format!("session/destroy/{id}"))?;
        let answer = self
            .send(Method::PUT, url, None, self.inner.request_timeout)
            .await?;
        if answer.status != StatusCode::OK {
            return Err(answer.error());
        }
        Ok(())
    }

    /// The address of the Raft leader; empty if there is none.
    pub(crate) async fn leader(&self) -> Result<String, ConsulError> {
        let url = self.api_url("status/leader")?;
        let answer = self
            .send(Method::GET, url, None, self.inner.request_timeout)
            .await?;
        if answer.status != StatusCode::OK {
            return Err(answer.error());
        }
        answer.parse("status/leader")
    }

    /// The agent's clock, from the `Date` header of a status request: whole
    /// seconds (HTTP dates carry no fraction; Go truncates).
    pub(crate) async fn date(&self) -> Result<std::time::SystemTime, ConsulError> {
        let url = self.api_url("status/leader")?;
        let timeout = self.inner.request_timeout;
        let mut request = self.inner.client.get(url).timeout(timeout);
        if let Some(token) = &self.inner.token {
            request = request.header(super::TOKEN_HEADER, token.clone());
        }
        let response = request
            .send()
            .await
            .map_err(|e| ConsulError::transport(e, timeout))?;
        let date = response
            .headers()
            .get(reqwest::header::DATE)
            .ok_or_else(|| ConsulError::Protocol("no Date header".into()))?
            .to_str()
            .map_err(|_| ConsulError::Protocol("a Date header that is not text".into()))
            .and_then(|text| {
                httpdate::parse_http_date(text)
                    .map_err(|e| ConsulError::Protocol(format!("Date header {text:?}: {e}")))
            })?;
        if !response.status().is_success() {
            return Err(ConsulError::Status {
                status: response.status().as_u16(),
                body: String::new(),
            });
        }
        Ok(date)
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::protocol_error;
    use super::*;
    use crate::backend::consul::http::decode;

    #[test]
    fn session_and_leader_answers() {
        let created: SessionCreated = decode(
            br#"{"ID":"adf4238a-882b-9ddc-4a9d-5b6758e4159e"}"#,
            "session/create",
        )
        .unwrap();
        assert_eq!(
            created.id.as_deref(),
            Some("adf4238a-882b-9ddc-4a9d-5b6758e4159e")
        );
        let created: SessionCreated = decode(b"{}", "session/create").unwrap();
        assert_eq!(created.id, None);
        protocol_error(decode::<SessionCreated>(br#"{"ID":1}"#, "session/create"));
        let leader: String = decode(br#""127.0.0.1:8300""#, "status/leader").unwrap();
        assert_eq!(leader, "127.0.0.1:8300");
        let leader: String = decode(br#""""#, "status/leader").unwrap();
        assert!(leader.is_empty());
        protocol_error(decode::<String>(b"127", "status/leader"));
    }

    #[test]
    fn session_info_answers() {
        let info: Option<Vec<SessionInfo>> = decode(
            br#"[{"ID":"5ac0","Name":"anykv-ttl","Node":"n","LockDelay":0,"Behavior":"delete","TTL":"10000ms","NodeChecks":[],"ServiceChecks":null,"CreateIndex":364,"ModifyIndex":364}]"#,
            "session/info",
        )
        .unwrap();
        assert_eq!(
            info.unwrap(),
            [SessionInfo {
                name: "anykv-ttl".into(),
                ttl: "10000ms".into(),
                behavior: "delete".into(),
            }]
        );
        let none: Option<Vec<SessionInfo>> = decode(b"null", "session/info").unwrap();
        assert!(none.is_none());
        let empty: Option<Vec<SessionInfo>> = decode(b"[]", "session/info").unwrap();
        assert_eq!(empty.unwrap(), []);
        protocol_error(decode::<Option<Vec<SessionInfo>>>(
            br#"[{"Name":1}]"#,
            "session/info",
        ));
    }
}
