//! The redis backend (cargo feature `redis`). Not implemented yet: opening a
//! URL of this scheme returns [`Error::Unsupported`].

use std::sync::Arc;

use crate::error::{Error, Result};
use crate::store::Store;
use crate::url::StoreUrl;

/// Opens a store from a parsed URL of this backend's scheme.
pub(crate) async fn open(url: StoreUrl) -> Result<Arc<dyn Store>> {
    let _ = url;
    Err(Error::Unsupported {
        operation: "open",
        backend: "redis",
        hint: Some("this backend is not implemented yet".into()),
    })
}
