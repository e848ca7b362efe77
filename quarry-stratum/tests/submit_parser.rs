//! The in-place `mining.submit` parser against the general `serde_json::Value` one: every line
//! of the V1 fuzz corpus, hand-written edge cases and systematic mutations of real submits get
//! the same result from both, and the answers written without a JSON map are byte for byte the
//! lines the map wrote before.

use std::path::Path;

use quarry_stratum::v1::message::{
    error_line, parse_line, parse_line_value, result_line, Incoming, Request,
};
use quarry_stratum::v1::RequestError;
use quarry_work::share::ShareReject;
use serde_json::{json, Value};

const SUBMIT: &str = r#"{"id":4,"method":"mining.submit","params":["addr.w","1a","00000000deadbeef","6500a1b2","0000ffff"]}"#;
const SUBMIT_VERSION: &str = r#"{"params":["addr.w","1a","00000000deadbeef","6500a1b2","0000ffff","1fffe000"],"id":"x","method":"mining.submit"}"#;

/// Both parsers on one line; true when it was a well-formed submit (the fast path's case).
fn same(line: &[u8]) -> bool {
    let fast = parse_line(line);
    let general = parse_line_value(line);
    assert_eq!(
        fast,
        general,
        "the parsers differ on {:?}",
        String::from_utf8_lossy(line)
    );
    matches!(
        fast,
        Ok(Incoming::Request {
            request: Ok(Request::Submit(_)),
            ..
        })
    )
}

fn lines_of_corpus(target: &str) -> Vec<Vec<u8>> {
    let mut lines = Vec::new();
    for dir in ["corpus", "regressions"] {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../fuzz")
            .join(dir)
            .join(target);
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let data = std::fs::read(entry.path()).expect("corpus file");
            lines.extend(data.split(|b| *b == b'\n').map(<[u8]>::to_vec));
            lines.push(data);
        }
    }
    lines
}

#[test]
fn the_v1_corpus_parses_the_same_both_ways() {
    let mut lines = lines_of_corpus("v1_session");
    lines.extend(lines_of_corpus("v1_submit"));
    assert!(
        lines.len() > 200,
        "the corpus is there: {} lines",
        lines.len()
    );
    let submits = lines.iter().filter(|l| same(l)).count();
    assert!(submits > 0, "some corpus lines are valid submits");
}

#[test]
fn edge_cases_parse_the_same_both_ways() {
    let valid = [
        SUBMIT,
        SUBMIT_VERSION,
        r#"  {"id":4,"method":"mining.submit","params":["a","b","","0","0"]}  "#,
        r#"{"method":"mining.submit","params":["a","b","00","0","0",null]}"#,
        r#"{"method":"mining.submit","params":["a","b","00","0","0",null,7,{"x":[1]}]}"#,
        r#"{"id":null,"method":"mining.submit","params":["a","b","00","FFFFFFFF","ffffffff","0"],"extra":{"deep":[[[]]]}}"#,
        r#"{"id":1.5e3,"method":"mining.submit","params":["a","b","00","1","2"]}"#,
        r#"{"id":18446744073709551615,"method":"mining.submit","params":["a","b","00","1","2"]}"#,
        r#"{"id":-9223372036854775808,"method":"mining.submit","params":["a","b","00","1","2"]}"#,
        r#"{"id":{"b":1,"a":[2]},"method":"mining.submit","params":["a","b","00","1","2"]}"#,
        r#"{"id":"\u00e9\"","method":"mining.submit","params":["ä.w","b","00","1","2"]}"#,
    ];
    for line in valid {
        assert!(same(line.as_bytes()), "{line} is a valid submit");
    }
    let deep = format!(
        r#"{{"id":1,"method":"mining.submit","params":["a","b","00","1","2"],"x":{}{}}}"#,
        "[".repeat(200),
        "]".repeat(200)
    );
    let long_worker = format!(
        r#"{{"id":1,"method":"mining.submit","params":["{}","b","00","1","2"]}}"#,
        "w".repeat(257)
    );
    let others = [
        // Left to the general parser: escapes in params, repeated keys, arrays, other methods.
        r#"{"id":1,"method":"mining.submit","params":["a\u002ew","b","00","1","2"]}"#,
        r#"{"id":1,"method":"mining\u002esubmit","params":["a","b","00","1","2"]}"#,
        r#"{"id":1,"id":2,"method":"mining.submit","params":["a","b","00","1","2"]}"#,
        r#"{"id":1,"method":"mining.submit","params":["a","b","00","1","2"],"params":[]}"#,
        r#"{"id":1,"method":"mining.submit","method":"mining.subscribe","params":[]}"#,
        r#"[1,"mining.submit",["a","b","00","1","2"]]"#,
        r#"{"id":1,"method":"mining.subscribe","params":["a","b","00","1","2"]}"#,
        // Bad params, in every position, and each error in its order.
        r#"{"id":1,"method":"mining.submit","params":["a","b","00","1"]}"#,
        r#"{"id":1,"method":"mining.submit","params":[1,"b","00","1","2"]}"#,
        r#"{"id":1,"method":"mining.submit","params":["a",1,"zz","1","2"]}"#,
        r#"{"id":1,"method":"mining.submit","params":["a","b","zz","x","2"]}"#,
        r#"{"id":1,"method":"mining.submit","params":["a","b","0","1","2"]}"#,
        r#"{"id":1,"method":"mining.submit","params":["a","b","00","123456789","2"]}"#,
        r#"{"id":1,"method":"mining.submit","params":["a","b","00","1","-2"]}"#,
        r#"{"id":1,"method":"mining.submit","params":["a","b","00","1","2",3]}"#,
        r#"{"id":1,"method":"mining.submit","params":["a","b","00","1","2","xyz"]}"#,
        r#"{"id":1,"method":"mining.submit","params":["a","b","00","1",""]}"#,
        r#"{"id":1,"method":"mining.submit","params":null}"#,
        r#"{"id":1,"method":"mining.submit","params":{"0":"a"}}"#,
        r#"{"id":1,"method":"mining.submit"}"#,
        r#"{"id":1,"params":["a","b","00","1","2"]}"#,
        r#"{"id":1,"method":5,"params":["a","b","00","1","2"]}"#,
        r#"{"id":1,"result":true,"params":["a","b","00","1","2"]}"#,
        r#"{"id":1,"method":"mining.submit","params":["a","b","00","1","2"]} x"#,
        r#"{"id":1,"method":"mining.submit","params":["a","b","00","1","2"]"#,
        "",
        "null",
        "\u{feff}{}",
    ];
    for line in others
        .iter()
        .map(|l| l.to_string())
        .chain([deep, long_worker])
    {
        same(line.as_bytes());
    }
    // Not UTF-8 inside a string, and outside one.
    let mut bytes = SUBMIT.as_bytes().to_vec();
    bytes[45] = 0xff;
    assert!(!same(&bytes));
    bytes[2] = 0xff;
    assert!(!same(&bytes));
}

#[test]
fn every_mutation_of_real_submits_parses_the_same_both_ways() {
    let mut checked = 0;
    for base in [SUBMIT, SUBMIT_VERSION] {
        let base = base.as_bytes();
        // Every truncation.
        for end in 0..=base.len() {
            same(&base[..end]);
            checked += 1;
        }
        // Every byte replaced by a few that matter to JSON, and deleted, and doubled.
        for at in 0..base.len() {
            for byte in [
                b'"', b'\\', b',', b':', b'[', b']', b'{', b'}', b' ', b'0', b'g', 0,
            ] {
                let mut line = base.to_vec();
                line[at] = byte;
                same(&line);
                let mut line = base.to_vec();
                line.insert(at, byte);
                same(&line);
                checked += 2;
            }
            let mut line = base.to_vec();
            line.remove(at);
            same(&line);
            checked += 1;
        }
    }
    assert!(checked > 5000);
}

/// The answers as they were written before: through a `serde_json` map.
fn result_line_before(id: &Value, result: Value) -> String {
    let mut line = json!({"id": id, "result": result, "error": null}).to_string();
    line.push('\n');
    line
}

fn error_line_before(id: &Value, error: &RequestError) -> String {
    let mut line = json!({
        "id": id,
        "result": null,
        "error": [error.code().code(), error.to_string(), null],
    })
    .to_string();
    line.push('\n');
    line
}

#[test]
fn answers_are_byte_for_byte_what_the_json_map_wrote() {
    let ids = [
        json!(null),
        json!(0),
        json!(4_294_967_296u64),
        json!(-7),
        json!(1.5),
        json!(1e300),
        json!("abc"),
        json!("quote \" backslash \\ newline \n tab \t é \u{1}"),
        json!([1, "two", null]),
        json!({"z": 1, "a": {"y": 2, "b": 3}}),
        json!(true),
    ];
    let errors = [
        RequestError::Parse("invalid JSON".into()),
        RequestError::UnknownMethod("mining.\"nope\"\n".into()),
        RequestError::InvalidParams("nonce must be up to 8 hex digits".into()),
        RequestError::NotSubscribed,
        RequestError::Unauthorized,
        RequestError::BadAddress {
            user: "bc1\u{7f}\"x".into(),
            reason: "bad checksum".into(),
        },
        RequestError::NotRecorded,
        RequestError::Share(ShareReject::LowDifficulty),
        RequestError::Share(ShareReject::Duplicate),
        RequestError::Share(ShareReject::JobNotFound),
    ];
    let results = [
        json!(true),
        json!(false),
        json!(null),
        json!([
            [["mining.set_difficulty", "ab"], ["mining.notify", "ab"]],
            "ab",
            8
        ]),
        json!({"version-rolling": true, "version-rolling.mask": "1fffe000"}),
    ];
    for id in &ids {
        for result in &results {
            assert_eq!(
                result_line(id, result.clone()),
                result_line_before(id, result.clone())
            );
        }
        for error in &errors {
            assert_eq!(error_line(id, error), error_line_before(id, error));
        }
    }
}
