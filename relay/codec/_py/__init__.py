"""Pure-Python reference twin of the Rust codec ``relay._codec_rs`` (crate codec-rs/).

Same API, same answers on every input: the Rust module is tested against this one. JSON is
parsed with ``orjson.loads`` (orjson 3.13.0 is pinned), which *defines* what a valid envelope is;
replies are encoded with ``orjson.dumps``. The rules are described in docs/codec.md.

One module per file of the crate, under the same name, importing each other the same way:

    codec-rs/src/close.rs     close.py     close codes, the close a decoder answers with
    codec-rs/src/frame.rs     frame.py     RFC 6455 frames, the frame loop both decoders share
    codec-rs/src/json.rs      json.py      JSON (orjson here)
    codec-rs/src/envelope.rs  envelope.py  the Huawei envelope's rules, request-id window, split
    codec-rs/src/decoder.rs   decoder.py   the Huawei decoder
    codec-rs/src/aws.rs       aws.py       the AWS tunnel decoder
    codec-rs/src/end.rs       end.py       the ends' codec (the agent's and `relay forward`'s data path)
    codec-rs/src/lib.rs       this file (the module's names, as its ``#[pymodule]``) and
                              bindings.py (the argument checks of its ``mod bindings``)
"""

from __future__ import annotations

from relay.codec._py.aws import AwsDecoder, encode_binary
from relay.codec._py.decoder import Decoder
from relay.codec._py.end import AwsEndCodec, EndCodec
from relay.codec._py.envelope import DEVICE, SOURCE
from relay.codec._py.frame import encode_close, encode_ping, encode_text

__all__ = ["SOURCE", "DEVICE", "IMPLEMENTATION", "Decoder", "AwsDecoder", "encode_text", "encode_binary",
           "encode_close", "encode_ping", "EndCodec", "AwsEndCodec"]

IMPLEMENTATION: str = "python"
