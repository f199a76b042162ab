//! The validated requests the daemon acts on (issue 11, layout): what
//! `http::validate` makes of a request body and what `daemon` consumes, so
//! neither imports the other's module for them (WORKER-4210, 4220, 4221).

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShardLayout {
    Single,
    TensorParallel,
}

#[derive(Debug, Clone, PartialEq)]
pub struct PlanRequest {
    pub model_ref: String,
    pub shard_layout: ShardLayout,
    pub tp_degree: Option<u32>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct CommitRequest {
    pub model_ref: String,
    pub shard_id: String,
    pub shard_index: u32,
    pub path: Option<String>,
    pub expected_digest: Option<[u8; 32]>,
    /// Detached Ed25519 signature over the model file (64 bytes, hex).
    pub signature: Option<Vec<u8>>,
}
