//! Certificate signing requests: any DER, checked for one identity.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let identity = "web.demo.serviceaccount.identity.weft.cluster.local"
        .parse()
        .unwrap();
    let _ = weft_identity::csr::check_csr(data, &identity);
});
