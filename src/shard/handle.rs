//! ModelShardHandle: what a client learns about a sealed, resident model
//! shard (WORKER-4110, 4111, 4112, 4226, 4231).
//!
//! It carries identifiers, sizes, the resident digest and the HMAC seal, and
//! never a device or host pointer (4111). `handle_id` in an execute request is
//! the handle's `shard_id`.

use crate::backend::BackendKind;
use crate::shard::seal::SealKey;
use serde::Serialize;
use std::time::{SystemTime, UNIX_EPOCH};

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ModelShardHandle {
    pub shard_id: String,
    pub gpu_device: u32,
    /// Bytes the engine holds for this shard (weights + KV cache + scratch),
    /// in VRAM on the CUDA backend, in host memory on the CPU reference path.
    pub vram_bytes: u64,
    /// True only while the resident bytes match `digest` (4112).
    pub sealed: bool,
    /// Resident digest (see `shard::digest`), lowercase hex.
    pub digest: String,
    pub model_ref: String,
    pub shard_index: u32,
    pub total_shards: u32,
    /// RFC 3339 UTC time of sealing, millisecond precision.
    pub sealed_at: String,
    /// HMAC-SHA256 seal (see `shard::seal`), lowercase hex.
    pub seal: String,
    pub backend: BackendKind,
}

/// Everything needed to seal a single-GPU shard.
#[derive(Debug, Clone)]
pub struct ShardSpec {
    pub shard_id: String,
    pub gpu_device: u32,
    pub vram_bytes: u64,
    pub model_ref: String,
    pub backend: BackendKind,
}

impl ModelShardHandle {
    /// Seal a shard whose resident digest was just verified.
    pub fn seal(spec: ShardSpec, digest: &[u8; 32], key: &SealKey) -> Self {
        let sealed_at = rfc3339_now();
        let seal = key.seal(&spec.shard_id, digest, &sealed_at);
        Self {
            shard_id: spec.shard_id,
            gpu_device: spec.gpu_device,
            vram_bytes: spec.vram_bytes,
            sealed: true,
            digest: hex::encode(digest),
            model_ref: spec.model_ref,
            shard_index: 0,
            total_shards: 1,
            sealed_at,
            seal: hex::encode(seal),
            backend: spec.backend,
        }
    }

    /// Whether this handle's seal still covers `resident` (a freshly
    /// recomputed digest) under `key`. Checks both that the bytes did not
    /// change and that the handle itself was not altered.
    pub fn verify(&self, resident: &[u8; 32], key: &SealKey) -> bool {
        let Ok(seal) = hex::decode(&self.seal) else {
            return false;
        };
        hex::encode(resident) == self.digest
            && key.verify(&self.shard_id, resident, &self.sealed_at, &seal)
    }
}

/// Current UTC time as `YYYY-MM-DDTHH:MM:SS.mmmZ`.
pub fn rfc3339_now() -> String {
    let d = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    rfc3339(d.as_secs(), d.subsec_millis())
}

/// Format seconds since the Unix epoch (days-from-civil, proleptic Gregorian).
pub fn rfc3339(secs: u64, millis: u32) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let (h, m, s) = (rem / 3600, (rem % 3600) / 60, rem % 60);
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}T{h:02}:{m:02}:{s:02}.{millis:03}Z")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> ShardSpec {
        ShardSpec {
            shard_id: "shard-0".into(),
            gpu_device: 0,
            vram_bytes: 1234,
            model_ref: "m.gguf".into(),
            backend: BackendKind::Cpu,
        }
    }

    #[test]
    fn sealed_handle_verifies_and_detects_change() {
        let key = SealKey::from_bytes([3; 32]);
        let d = [9u8; 32];
        let h = ModelShardHandle::seal(spec(), &d, &key);
        assert!(h.sealed);
        assert_eq!(h.digest, hex::encode(d));
        assert!(h.verify(&d, &key));
        let mut d2 = d;
        d2[0] ^= 1;
        assert!(!h.verify(&d2, &key));
        let mut forged = h.clone();
        forged.shard_id = "other".into();
        assert!(!forged.verify(&d, &key));
        assert!(!h.verify(&d, &SealKey::from_bytes([4; 32])));
    }

    #[test]
    fn json_has_exactly_the_contract_fields() {
        let h = ModelShardHandle::seal(spec(), &[0; 32], &SealKey::from_bytes([1; 32]));
        let v = serde_json::to_value(&h).unwrap();
        let mut keys: Vec<&str> = v.as_object().unwrap().keys().map(|k| k.as_str()).collect();
        keys.sort_unstable();
        assert_eq!(
            keys,
            [
                "backend",
                "digest",
                "gpu_device",
                "model_ref",
                "seal",
                "sealed",
                "sealed_at",
                "shard_id",
                "shard_index",
                "total_shards",
                "vram_bytes"
            ]
        );
        assert_eq!(v["backend"], "cpu");
    }

    #[test]
    fn rfc3339_known_dates() {
        assert_eq!(rfc3339(0, 0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(951_782_400, 5), "2000-02-29T00:00:00.005Z");
        assert_eq!(rfc3339(1_795_863_599, 999), "2026-11-28T10:59:59.999Z");
        // Across centuries and their leap rules (1900 and 2100 are not leap
        // years, 2000 is), at the last second of a day and of a year.
        assert_eq!(rfc3339(946_684_799, 0), "1999-12-31T23:59:59.000Z");
        assert_eq!(rfc3339(4_107_542_399, 1), "2100-02-28T23:59:59.001Z");
        assert_eq!(rfc3339(4_107_542_400, 2), "2100-03-01T00:00:00.002Z");
        assert_eq!(rfc3339(1_709_251_199, 0), "2024-02-29T23:59:59.000Z");
        assert_eq!(rfc3339(253_402_300_799, 0), "9999-12-31T23:59:59.000Z");
        assert_eq!(rfc3339(3_723, 0), "1970-01-01T01:02:03.000Z");
    }
}
