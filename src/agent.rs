//! `wwclient`, the node agent: fetches `/runtime/{wwid}` from the heads of its rack and applies it atomically.
