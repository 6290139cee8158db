"""Where hosts come from (DESIGN.md: host providers): `agent` (joined by hand), `ssh`
(existing servers rackfire installs itself on), `cloud` (Libcloud). Only control/ uses
them."""
