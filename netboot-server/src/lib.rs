pub mod dhcp;
pub mod net;
pub mod tftp;
