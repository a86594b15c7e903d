//! The primary's JSON answers (`src/protocol/lib.rs`), deserialized from the bytes of a response
//! body as the agent does (`serde_json::from_slice`). An answer that parses is serialized
//! again and must parse to the same value.
#![no_main]

use gateway_protocol::{
    AccountInfo, CertificateBundle, ErrorBody, Health, RegisterResponse, SecureHello, ServerRecord,
};
use libfuzzer_sys::fuzz_target;
use serde::Serialize;
use serde::de::DeserializeOwned;

fn round_trip<T: Serialize + DeserializeOwned>(data: &[u8]) {
    let Ok(first) = serde_json::from_slice::<T>(data) else {
        return;
    };
    let text = serde_json::to_string(&first).expect("a parsed answer serializes");
    let second: T = serde_json::from_str(&text).expect("a serialized answer parses");
    assert_eq!(
        serde_json::to_string(&second).expect("serializes"),
        text,
        "{}",
        String::from_utf8_lossy(data)
    );
}

fuzz_target!(|data: &[u8]| {
    round_trip::<Health>(data);
    round_trip::<AccountInfo>(data);
    round_trip::<RegisterResponse>(data);
    round_trip::<ServerRecord>(data);
    round_trip::<CertificateBundle>(data);
    round_trip::<SecureHello>(data);
    round_trip::<ErrorBody>(data);
});
