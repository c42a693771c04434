//! The vsock backend: Firecracker's hybrid protocol over Unix sockets.
//!
//! - Host-initiated: a client connects to the device's socket `uds_path`, sends
//!   `CONNECT <port>\n`, and receives `OK <host_port>\n` once the guest accepted; from then on
//!   the Unix stream is the guest socket. If the guest refuses (RST), the client's socket is
//!   closed.
//! - Guest-initiated: a guest connection to CID 2, port `P` is connected to the Unix socket
//!   `<uds_path>_P`.

mod connection;
mod credit;
mod muxer;
mod sys;
mod txbuf;

pub(crate) use muxer::VsockMuxer;

/// Receive buffer we advertise per connection (`buf_alloc`): guest -> host bytes that may be
/// in flight, unforwarded to the host stream.
pub const CONN_BUF_SIZE: u32 = 256 * 1024;

/// Most connections (established, connecting, or host clients still sending their CONNECT
/// line) at once; more are refused (host clients closed, guest requests reset).
pub const MAX_CONNECTIONS: usize = 1024;

/// Longest `CONNECT <port>\n` line accepted, newline included.
pub const CONNECT_LINE_MAX: usize = 32;

/// First host-side port handed to host-initiated connections (`OK <host_port>`).
pub const FIRST_LOCAL_PORT: u32 = 1 << 30;

/// Parse a complete `CONNECT <port>\n` line (exactly that: one space, 1-10 decimal digits
/// that fit a u32, a newline).
pub fn parse_connect_line(line: &[u8]) -> Option<u32> {
    let digits = line.strip_prefix(b"CONNECT ")?.strip_suffix(b"\n")?;
    if digits.is_empty() || digits.len() > 10 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    digits.iter().try_fold(0u32, |acc, d| {
        acc.checked_mul(10)?.checked_add(u32::from(d - b'0'))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_lines() {
        assert_eq!(parse_connect_line(b"CONNECT 80\n"), Some(80));
        assert_eq!(parse_connect_line(b"CONNECT 0\n"), Some(0));
        assert_eq!(parse_connect_line(b"CONNECT 4294967295\n"), Some(u32::MAX));
        assert_eq!(parse_connect_line(b"CONNECT 4294967296\n"), None);
        assert_eq!(parse_connect_line(b"CONNECT 99999999999\n"), None);
        assert_eq!(parse_connect_line(b"CONNECT \n"), None);
        assert_eq!(parse_connect_line(b"CONNECT 80"), None);
        assert_eq!(parse_connect_line(b"CONNECT  80\n"), None);
        assert_eq!(parse_connect_line(b"CONNECT -1\n"), None);
        assert_eq!(parse_connect_line(b"CONNECT 8a\n"), None);
        assert_eq!(parse_connect_line(b"connect 80\n"), None);
        assert_eq!(parse_connect_line(b"CONNECT 80 \n"), None);
        assert_eq!(parse_connect_line(b"GET / HTTP/1.1\n"), None);
    }
}
