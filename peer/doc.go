// Package peer authenticates autopod agents to each other and carries their
// messages: each host's identity (key and self-signed certificate), the store of
// pinned peers, mutual TLS that trusts exactly the pinned certificates, and the
// framing of control messages and bulk streams on a connection.
//
// # Trust
//
// There is no certificate authority. `autopodctl peer init` creates this host's
// identity (InitIdentity); `autopodctl peer add` pins another host's certificate
// under a name (Store.Add). A connection is established only when both sides find
// the other's certificate pinned: Dial checks the server's certificate against the
// one pinned for the peer it meant to reach, and Accept looks the client's
// certificate up in the store. Names, addresses, expiry dates and the certificate's
// subject play no part in the decision; the SHA-256 fingerprint of the DER
// certificate is the whole of the trust. Before both sides have checked the other's
// certificate, nothing crosses but the TLS handshake: the first message is the
// server's hello, sent once it has accepted the client.
//
// # Wire format
//
// After the TLS 1.3 handshake (ALPN "autopod-peer/1"), the connection carries
// frames: one byte of kind, a 4-byte big-endian payload length of at most
// MaxFrameSize, then the payload.
//
//	'J'  a control message: JSON {"type": "...", "body": ...}
//	'X'  an error reported by the other side: UTF-8 text
//	'D'  a chunk of a bulk stream (at most 1 MiB from this implementation)
//	'E'  the end of a bulk stream: 8-byte big-endian total length, 32-byte SHA-256
//
// The server sends a "hello" control message as soon as it has accepted the client,
// so that a client whose certificate the server refused learns it in Dial (in TLS
// 1.3 the client's handshake completes before the server has checked the client's
// certificate). A stream is a run of 'D' frames closed by an 'E' frame, or cut short
// by an 'X' frame when the sender could not read its source; the receiver checks the
// length and checksum before reporting success.
package peer
