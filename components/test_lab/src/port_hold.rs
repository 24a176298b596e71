//! Keeping a stopped process's ports: a TCP socket bound to the address
//! but never listening. Nothing else gets the port while it is held (a
//! bind to port 0 skips ports with a bound socket, and so does the
//! kernel's choice of a connecting socket's own port, which could
//! otherwise connect a client to itself), and a connection to it is
//! refused, as to a dead process.

use std::net::{SocketAddr, ToSocketAddrs};

use socket2::{Domain, Socket, Type};

/// A held port; released when dropped.
pub struct PortHold {
    _socket: Socket,
}

impl PortHold {
    /// Holds `addr` (`host:port`). Exclusive when nothing else is bound
    /// there; if sockets of the stopped process linger there (TIME_WAIT),
    /// bound with `SO_REUSEADDR` beside them, which still keeps random
    /// ports and connecting sockets off it.
    pub fn bind(addr: &str) -> std::io::Result<PortHold> {
        let sa: SocketAddr = addr
            .to_socket_addrs()?
            .next()
            .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidInput, "no address"))?;
        let socket = |reuse: bool| -> std::io::Result<Socket> {
            let s = Socket::new(Domain::for_address(sa), Type::STREAM, None)?;
            s.set_reuse_address(reuse)?;
            s.bind(&sa.into())?;
            Ok(s)
        };
        let s = match socket(false) {
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => socket(true),
            r => r,
        }?;
        Ok(PortHold { _socket: s })
    }
}
