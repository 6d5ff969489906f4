//! Keel's one HTTP/1.1 implementation, for every server and client: the agent, the console's local
//! API, `keelctl manager serve`, keel-vmm's control API.
