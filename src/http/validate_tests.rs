//! Unit tests of request validation (WORKER-4300–4305, 4242–4244, 4995).
use super::*;

const LIM: Limits = Limits {
    max_prompt_len: 20,
    max_tokens: 100,
};

fn exec(j: &str) -> Result<ExecuteRequest> {
    execute(j.as_bytes(), &LIM)
}

fn err_msg(r: Result<impl std::fmt::Debug>) -> String {
    let e = r.expect_err("expected a rejection");
    assert_eq!(e.code(), "INVALID_PARAMS", "{e:?}");
    e.message().to_string()
}

#[test]
fn execute_defaults() {
    let r = exec(r#"{"handle_id":"shard-0","prompt":"hi"}"#).unwrap();
    assert_eq!(r.handle_id, "shard-0");
    assert_eq!(r.params.max_tokens, DEFAULT_MAX_TOKENS.min(100));
    assert_eq!(r.params.seed, DEFAULT_SEED);
    assert_eq!(r.params.sampling, SamplingParams::GREEDY);
    assert!(r.params.stop.is_empty());
}

#[test]
fn execute_all_fields() {
    let r = exec(
        r#"{"handle_id":"h","prompt":"hi","params":{"max_tokens":7,"temperature":0.5,
            "seed":18446744073709551615,"top_k":40,"top_p":0.9,"stop":["\n","END"]}}"#,
    )
    .unwrap();
    assert_eq!(r.params.max_tokens, 7);
    assert_eq!(r.params.seed, u64::MAX);
    assert_eq!(
        r.params.sampling,
        SamplingParams {
            temperature: 0.5,
            top_k: 40,
            top_p: 0.9
        }
    );
    assert_eq!(r.params.stop, vec!["\n".to_string(), "END".to_string()]);
}

#[test]
fn every_param_range_is_checked_and_named() {
    let cases = [
        (r#""max_tokens":0"#, "params.max_tokens"),
        (r#""max_tokens":101"#, "params.max_tokens"),
        (r#""max_tokens":-1"#, "params.max_tokens"),
        (r#""max_tokens":1.5"#, "params.max_tokens"),
        (r#""max_tokens":"5""#, "params.max_tokens"),
        (r#""temperature":-0.1"#, "params.temperature"),
        (r#""temperature":2.01"#, "params.temperature"),
        (r#""temperature":"hot""#, "params.temperature"),
        (r#""top_p":0"#, "params.top_p"),
        (r#""top_p":1.1"#, "params.top_p"),
        (r#""top_k":-1"#, "params.top_k"),
        (r#""top_k":1000001"#, "params.top_k"),
        (r#""seed":-3"#, "params.seed"),
        (r#""seed":"x""#, "params.seed"),
        (r#""stop":[""]"#, "params.stop[0]"),
        (r#""stop":["a",3]"#, "params.stop[1]"),
        (r#""stop":{}"#, "params.stop"),
        (
            r#""stop":["1","2","3","4","5","6","7","8","9"]"#,
            "params.stop",
        ),
        (r#""stop":["a\u0000"]"#, "params.stop[0]"),
        (r#""bogus":1"#, "params.bogus"),
    ];
    for (frag, field) in cases {
        let j = format!(r#"{{"handle_id":"h","prompt":"p","params":{{{frag}}}}}"#);
        let m = err_msg(exec(&j));
        assert!(
            m.contains(&format!("`{field}`")),
            "{frag}: message {m:?} should name {field}"
        );
    }
}

#[test]
fn boundaries_are_accepted() {
    let j = r#"{"handle_id":"h","prompt":"p","params":{"max_tokens":100,"temperature":2,"top_p":1,"top_k":0}}"#;
    assert!(exec(j).is_ok());
    let j = r#"{"handle_id":"h","prompt":"p","params":{"max_tokens":1,"temperature":0,"top_p":0.0001}}"#;
    assert!(exec(j).is_ok());
    let p20 = "é".repeat(20);
    assert!(
        exec(&format!(r#"{{"handle_id":"h","prompt":"{p20}"}}"#)).is_ok(),
        "limit counts characters"
    );
    // top_k, the number of stop sequences and a stop sequence's length (in
    // characters, not bytes) are each accepted at their limit exactly.
    let j = r#"{"handle_id":"h","prompt":"p","params":{"top_k":1000000}}"#;
    assert!(exec(j).is_ok(), "top_k at its limit");
    let eight = r#""stop":["1","2","3","4","5","6","7","8"]"#;
    let j = format!(r#"{{"handle_id":"h","prompt":"p","params":{{{eight}}}}}"#);
    assert_eq!(exec(&j).unwrap().params.stop.len(), MAX_STOP_SEQUENCES);
    let at_limit = "é".repeat(MAX_STOP_LEN);
    let j = format!(r#"{{"handle_id":"h","prompt":"p","params":{{"stop":"{at_limit}"}}}}"#);
    assert_eq!(exec(&j).unwrap().params.stop, vec![at_limit.clone()]);
    let past = format!("{at_limit}é");
    let j = format!(r#"{{"handle_id":"h","prompt":"p","params":{{"stop":["a","{past}"]}}}}"#);
    assert!(err_msg(exec(&j)).contains("`params.stop[1]`"));
}

#[test]
fn prompt_checks() {
    assert!(err_msg(exec(r#"{"handle_id":"h","prompt":"a\u0000b"}"#)).contains("NUL"));
    assert!(err_msg(exec(r#"{"handle_id":"h","prompt":""}"#)).contains("`prompt`"));
    let long = "x".repeat(21);
    assert!(
        err_msg(exec(&format!(r#"{{"handle_id":"h","prompt":"{long}"}}"#)))
            .contains("max_prompt_len")
    );
    assert!(err_msg(exec(r#"{"handle_id":"h"}"#)).contains("`prompt` is required"));
    assert!(err_msg(exec(r#"{"handle_id":"h","prompt":5}"#)).contains("`prompt` must be a string"));
    // A lone surrogate cannot become UTF-8.
    assert!(err_msg(exec(r#"{"handle_id":"h","prompt":"\ud800"}"#)).contains("not valid JSON"));
}

#[test]
fn invalid_utf8_body_is_refused() {
    let mut body = br#"{"handle_id":"h","prompt":""#.to_vec();
    body.extend_from_slice(&[0xff, 0xfe]);
    body.extend_from_slice(br#""}"#);
    assert!(err_msg(execute(&body, &LIM)).contains("UTF-8"));
}

#[test]
fn unknown_top_level_field_is_named() {
    let m = err_msg(exec(r#"{"handle_id":"h","prompt":"p","extra":true}"#));
    assert!(m.contains("`extra`"), "{m}");
    assert!(err_msg(exec("[1,2]")).contains("JSON object"));
    assert!(err_msg(exec("{")).contains("not valid JSON"));
}

#[test]
fn identifiers_are_checked() {
    for bad_id in ["", "a b", "../x", "x\u{7f}", &"a".repeat(129), "ünï"] {
        let j = serde_json::json!({"handle_id": bad_id, "prompt": "p"}).to_string();
        assert!(err_msg(exec(&j)).contains("`handle_id`"), "{bad_id:?}");
    }
    assert!(
        exec(&serde_json::json!({"handle_id": "a".repeat(128), "prompt": "p"}).to_string()).is_ok()
    );
    assert!(err_msg(cancel(br#"{"job_id":"a/b"}"#)).contains("`job_id`"));
    assert_eq!(
        cancel(br#"{"job_id":"job-12ab"}"#).unwrap().job_id,
        "job-12ab"
    );
}

#[test]
fn plan_fields() {
    let p = plan(br#"{"model_ref":"m.gguf","shard_layout":"single"}"#).unwrap();
    assert_eq!((p.shard_layout, p.tp_degree), (ShardLayout::Single, None));
    let p = plan(br#"{"model_ref":"/models/m.gguf"}"#).unwrap();
    assert_eq!(p.model_ref, "/models/m.gguf");
    let p = plan(br#"{"model_ref":"m","shard_layout":"tensor_parallel","tp_degree":2}"#).unwrap();
    assert_eq!(
        (p.shard_layout, p.tp_degree),
        (ShardLayout::TensorParallel, Some(2))
    );
    assert!(err_msg(plan(
        br#"{"model_ref":"m","shard_layout":"tensor_parallel"}"#
    ))
    .contains("`tp_degree`"));
    assert!(err_msg(plan(br#"{"model_ref":"m","shard_layout":"mesh"}"#)).contains("`shard_layout`"));
    assert!(err_msg(plan(br#"{"model_ref":"m","tp_degree":0}"#)).contains("`tp_degree`"));
    assert!(err_msg(plan(br#"{"model_ref":"m b"}"#)).contains("`model_ref`"));
    assert!(err_msg(plan(br#"{"shard_layout":"single"}"#)).contains("`model_ref`"));
    assert!(err_msg(plan(br#"{"model_ref":"m","x":1}"#)).contains("`x`"));
}

#[test]
fn commit_fields() {
    let d = "0f".repeat(32);
    let j = format!(
        r#"{{"model_ref":"m.gguf","shard_id":"s1","shard_index":0,"path":"sub/m.gguf","expected_digest":"{d}"}}"#
    );
    let c = commit(j.as_bytes()).unwrap();
    assert_eq!(c.expected_digest, Some([0x0f; 32]));
    assert_eq!(c.path.as_deref(), Some("sub/m.gguf"));
    assert!(err_msg(commit(
        br#"{"model_ref":"m","shard_id":"s","expected_digest":"12"}"#
    ))
    .contains("`expected_digest`"));
    assert!(err_msg(commit(
        br#"{"model_ref":"m","shard_id":"s","shard_index":1}"#
    ))
    .contains("`shard_index`"));
    assert!(err_msg(commit(br#"{"model_ref":"m"}"#)).contains("`shard_id`"));
    assert!(
        err_msg(commit(br#"{"model_ref":"m","shard_id":"s","path":"a b"}"#)).contains("`path`")
    );
    assert!(err_msg(commit(
        br#"{"model_ref":"m","shard_id":"s","bytes":"AAAA"}"#
    ))
    .contains("`bytes`"));
    assert!(err_msg(commit(
        br#"{"model_ref":"m","shard_id":"s","signature":"abcd"}"#
    ))
    .contains("`signature`"));
    let sig = format!(
        r#"{{"model_ref":"m","shard_id":"s","signature":"{}"}}"#,
        "00".repeat(64)
    );
    assert_eq!(
        commit(sig.as_bytes()).unwrap().signature,
        Some(vec![0u8; 64])
    );
}

#[cfg(feature = "test-hooks")]
#[test]
fn fault_fields() {
    use crate::engine::Fault;
    assert_eq!(
        fault(br#"{"kind":"device_error"}"#).unwrap(),
        Fault::DeviceError
    );
    assert_eq!(
        fault(br#"{"kind":"flip_resident_byte","offset":9}"#).unwrap(),
        Fault::FlipResidentByte { offset: 9 }
    );
    assert!(err_msg(fault(br#"{"kind":"melt"}"#)).contains("`kind`"));
    assert_eq!(
        fault(br#"{"kind":"hang_next_step","ms":600000}"#).unwrap(),
        Fault::HangNextStep { ms: 600_000 }
    );
    for bad in [
        &br#"{"kind":"hang_next_step"}"#[..],
        br#"{"kind":"hang_next_step","ms":600001}"#,
    ] {
        assert!(err_msg(fault(bad)).contains("`ms`"));
    }
}

#[test]
fn upload_query_carries_the_commit_fields() {
    let d = "ab".repeat(32);
    let r = commit_upload(&format!(
        "model_ref=dir%2Fm.gguf&shard_id=s%3A1&shard_index=0&expected_digest=sha256%3A{d}"
    ))
    .unwrap();
    assert_eq!(r.model_ref, "dir/m.gguf");
    assert_eq!(r.shard_id, "s:1");
    assert_eq!(r.expected_digest, Some([0xab; 32]));
    assert_eq!(r.path, None);
}

#[test]
fn upload_query_is_as_strict_as_the_json_body() {
    let d = "ab".repeat(32);
    let ok = format!("model_ref=m&shard_id=s&expected_digest={d}");
    assert!(commit_upload(&ok).is_ok());
    // The digest is required: an upload is checked before anything uses it.
    assert!(
        err_msg(commit_upload("model_ref=m&shard_id=s")).contains("`expected_digest` is required")
    );
    assert!(err_msg(commit_upload(&format!("{ok}&path=x"))).contains("`path`"));
    assert!(err_msg(commit_upload(&format!("{ok}&colour=red"))).contains("unknown field `colour`"));
    assert!(err_msg(commit_upload(&format!("{ok}&shard_id=t"))).contains("given twice"));
    assert!(err_msg(commit_upload(&format!("{ok}&shard_index=1"))).contains("`shard_index`"));
    assert!(err_msg(commit_upload(&format!("{ok}&shard_index=x"))).contains("`shard_index`"));
    assert!(err_msg(commit_upload(&format!(
        "model_ref=m%2&shard_id=s&expected_digest={d}"
    )))
    .contains("percent-encoded"));
    assert!(err_msg(commit_upload(&format!(
        "model_ref=m%2B%2&shard_id=s&expected_digest={d}"
    )))
    .contains("percent-encoded"));
    assert!(err_msg(commit_upload(&format!(
        "model_ref=m%00&shard_id=s&expected_digest={d}"
    )))
    .contains("percent-encoded"));
    assert!(err_msg(commit_upload(&format!(
        "model_ref=m%ff&shard_id=s&expected_digest={d}"
    )))
    .contains("percent-encoded"));
    assert!(err_msg(commit_upload(&format!(
        "model_ref=..%2F%3Cx&shard_id=s&expected_digest={d}"
    )))
    .contains("`model_ref`"));
}

#[test]
fn model_refs_are_bounded_and_charset_checked() {
    assert!(model_ref("", "model_ref").is_err(), "empty");
    let at_limit = "a".repeat(MAX_REF_LEN);
    assert_eq!(model_ref(&at_limit, "model_ref").unwrap(), at_limit);
    let m = err_msg(model_ref(&format!("{at_limit}a"), "model_ref"));
    assert!(m.contains("`model_ref`") && m.contains("1..=1024"), "{m}");
    assert!(model_ref("models/tiny-1.5b_q4+k.gguf", "model_ref").is_ok());
    assert!(model_ref("tiny model.gguf", "model_ref").is_err(), "space");
}

#[test]
fn a_field_of_the_wrong_type_names_the_type_it_got() {
    let cases = [
        (r#""stop":{}"#, "an object"),
        (r#""stop":[true]"#, "a boolean"),
        (r#""stop":[null]"#, "null"),
        (r#""stop":[1]"#, "a number"),
        (r#""stop":[["x"]]"#, "an array"),
        (r#""max_tokens":"5""#, "a string"),
    ];
    for (frag, got) in cases {
        let j = format!(r#"{{"handle_id":"h","prompt":"p","params":{{{frag}}}}}"#);
        let m = err_msg(exec(&j));
        assert!(m.contains(&format!("got {got}")), "{frag}: {m}");
    }
}

/// JSON Schema's "integer" includes numbers written with a decimal point or
/// an exponent (`2.0`, `4e1`): they are taken as the integer they name, up
/// to 2^53 where f64 stops holding every integer; fractions, negatives and
/// larger values written that way are refused, naming the field (issue 13
/// point 5).
#[test]
fn integers_written_as_floats_are_integers() {
    let r = exec(
        r#"{"handle_id":"h","prompt":"hi","params":{"max_tokens":2.0,"seed":7e0,"top_k":4e1}}"#,
    )
    .unwrap();
    assert_eq!(r.params.max_tokens, 2);
    assert_eq!(r.params.seed, 7);
    assert_eq!(r.params.sampling.top_k, 40);
    let just_below =
        exec(r#"{"handle_id":"h","prompt":"hi","params":{"seed":9007199254740991.0}}"#).unwrap();
    assert_eq!(just_below.params.seed, 9_007_199_254_740_991);
    for (params, field) in [
        (r#"{"max_tokens":2.5}"#, "max_tokens"),
        (r#"{"seed":-1.0}"#, "seed"),
        (r#"{"seed":9007199254740992.0}"#, "seed"),
        (r#"{"top_k":0.5}"#, "top_k"),
    ] {
        let m = err_msg(exec(&format!(
            r#"{{"handle_id":"h","prompt":"hi","params":{params}}}"#
        )));
        assert!(m.contains(field), "{params}: {m}");
    }
}
