"""The fleet collector: many edge boxes' MQTT records into one PostgreSQL database, the
witness of every plant's hash chain, and the registry API for the fleet (docs/SCALING.md).

Above the components in the layers: it may use the store, the chain and the API's helpers;
nothing of the edge imports it (`cemsd collect` loads it lazily)."""
