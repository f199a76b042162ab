//! worker-orcd: a GPU inference worker daemon. One process per GPU loads one
//! GGUF model into device memory, seals it, and serves the Plan / Commit /
//! Ready / Execute API with token streams over Server-Sent Events.
//!
//! Layout by concern:
//! - [`config`], [`env`]: configuration from JSON, flags and the environment.
//! - [`model`]: GGUF parsing, block formats, architectures, tokenizer, MCD.
//! - [`engine`]: the `Engine` trait, the sampler, the CPU reference path and
//!   the CUDA backend.
//! - [`gpu`]: the one module where `unsafe` CUDA calls live (WORKER-4400).
//! - [`shard`]: ModelShardHandle, resident digest, HMAC seal.
//! - [`daemon`], [`http`]: lifecycle, scheduling, the RPC and SSE surface.
//! - [`telemetry`]: JSON logs with narration, Prometheus metrics.
//! - [`cli`]: the `generate`, `bench` and `make-model` commands.
#![deny(unsafe_code)]

pub mod api;
pub mod backend;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod engine;
pub mod env;
pub mod error;
pub mod fuzzing;
#[allow(unsafe_code)]
pub mod gpu;
pub mod http;
pub mod model;
pub mod mutants;
pub mod shard;
pub mod telemetry;
