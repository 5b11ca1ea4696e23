//! The transaction call, `/v1/txn`, through which every write goes.

use reqwest::{Method, StatusCode};
use serde::Deserialize;

use crate::backend::consul::error::ConsulError;
use crate::backend::consul::txn::Txn;

use super::{Entry, Http};

/// The answer of `/v1/txn`: HTTP 200 with `Results`, or 409 with `Errors`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(super) struct TxnAnswer {
    /// One result per operation that returns one (`null` when none does).
    #[serde(default)]
    results: Option<Vec<TxnResult>>,
    #[serde(default)]
    errors: Option<Vec<TxnFailure>>,
}

/// One result of a transaction.
#[derive(Debug, Deserialize)]
struct TxnResult {
    /// The entry a KV operation touched (value left out by Consul).
    #[serde(rename = "KV", default)]
    kv: Option<Entry>,
}

/// Why a transaction rolled back.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct TxnFailure {
    #[serde(default)]
    what: Option<String>,
}

impl Http {
    /// Runs a transaction. Returns the KV entry of the last result (the
    /// outcome of the last write, if the transaction ends with one), or
    /// [`ConsulError::TxnRejected`] if it rolled back.
    pub(crate) async fn txn(&self, txn: Txn) -> Result<Option<Entry>, ConsulError> {
        let url = self.inner.txn.clone();
        let body = txn.into_body()?;
        let answer = self
            .send(Method::PUT, url, Some(body), self.inner.request_timeout)
            .await?;
        match answer.status {
            StatusCode::OK => {
                let results = answer
                    .parse::<TxnAnswer>("transaction result")?
                    .results
                    .ok_or_else(|| ConsulError::Protocol("transaction without Results".into()))?;
                Ok(results.into_iter().next_back().and_then(|r| r.kv))
            }
            StatusCode::CONFLICT => {
                let what = answer
                    .parse::<TxnAnswer>("transaction errors")?
                    .errors
                    .unwrap_or_default()
                    .into_iter()
                    .filter_map(|e| e.what)
                    .collect::<Vec<_>>()
                    .join("; ");
                Err(ConsulError::TxnRejected { what })
            }
            _ => Err(answer.error()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::protocol_error;
    use super::*;
    use crate::backend::consul::http::decode;

    #[test]
    fn transaction_answers() {
        let ok: TxnAnswer = decode(
            br#"{"Results":[{"KV":{"Key":"a","ModifyIndex":3,"Value":null}},{"KV":{"LockIndex":0,"Key":"b","Flags":42,"Value":null,"Session":"s","CreateIndex":4,"ModifyIndex":18446744073709551615}}],"Errors":null,"Index":0}"#,
            "transaction result",
        )
        .unwrap();
        let last = ok.results.unwrap().pop().unwrap().kv.unwrap();
        assert_eq!(last.modify_index, u64::MAX);
        assert_eq!(last.flags, 42);
        assert_eq!(last.session.as_deref(), Some("s"));
        let empty: TxnAnswer =
            decode(br#"{"Results":[],"Errors":null}"#, "transaction result").unwrap();
        assert!(empty.results.unwrap().is_empty());
        let missing: TxnAnswer = decode(br#"{"Errors":null}"#, "transaction result").unwrap();
        assert!(missing.results.is_none());
        let failed: TxnAnswer = decode(
            br#"{"Results":null,"Errors":[{"OpIndex":0,"What":"failed to check index"},{"OpIndex":1}],"Index":0,"KnownLeader":true}"#,
            "transaction errors",
        )
        .unwrap();
        let what: Vec<_> = failed
            .errors
            .unwrap()
            .into_iter()
            .filter_map(|e| e.what)
            .collect();
        assert_eq!(what, ["failed to check index"]);
        for bad in [
            &br#"{"Results":{}}"#[..],
            br#"{"Results":[{"KV":{"Key":"a"}}]}"#,
            br#"{"Errors":[{"What":1}]}"#,
            b"<html>",
        ] {
            protocol_error(decode::<TxnAnswer>(bad, "transaction result"));
        }
    }
}
