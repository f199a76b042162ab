//! Sealed shards: the ModelShardHandle, the resident-bytes digest and the
//! HMAC seal (WORKER-4110–4122).
pub mod digest;
pub mod handle;
pub mod seal;
