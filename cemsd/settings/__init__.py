"""Settings models of the components, below cemsd.config: validating a configuration
never imports a component's runtime code (docs/ARCHITECTURE.md, Layers)."""
