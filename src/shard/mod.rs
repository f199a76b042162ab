//! Sealed shards: the ModelShardHandle, the resident-bytes digest and the
//! HMAC seal (WORKER-4110–4122), and the Ed25519 model signatures checked
//! before a model is admitted (WORKER-4222, 4313).
pub mod digest;
pub mod handle;
pub mod seal;
pub mod signature;
