//! Linkerd's transport header, read from any bytes; what parses re-encodes the same.
#![no_main]

use libfuzzer_sys::fuzz_target;
use weft_proxy::transport_header::TransportHeader;

fuzz_target!(|data: &[u8]| {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let mut input = data;
    if let Ok(header) = rt.block_on(TransportHeader::read(&mut input)) {
        let mut again = &header.encode()[..];
        let reread = rt.block_on(TransportHeader::read(&mut again)).unwrap();
        assert_eq!(reread.port, header.port);
        assert_eq!(reread.name, header.name);
    }
});
