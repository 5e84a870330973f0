"""Several services in one process, as ``deploy/mesh.yaml``'s ``processes`` says (a tool, like the
launcher: it is the one place that imports more than one service's code)."""
