//! Transparent mode: where a connection that iptables redirected to a
//! listener was going, as the kernel's connection tracking remembers it.

use std::net::SocketAddr;

use tokio::net::TcpStream;

/// The destination `stream` was redirected from (`SO_ORIGINAL_DST`, or
/// `IP6T_SO_ORIGINAL_DST` for IPv6); `None` for a connection made to the
/// listener itself, or where connection tracking knows nothing of it.
pub fn original_dst(stream: &TcpStream) -> Option<SocketAddr> {
    let local = stream.local_addr().ok()?;
    let socket = socket2::SockRef::from(stream);
    let original = match local {
        SocketAddr::V4(_) => socket.original_dst_v4(),
        SocketAddr::V6(_) => socket.original_dst_v6(),
    };
    let original = original.ok()?.as_socket()?;
    (original != local).then_some(original)
}
