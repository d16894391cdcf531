"""What the tests share: loops and scripts written as users write them, the ``monitor`` command in
the background, probes, and in-memory monitors. Scripts here also run as programs, by path."""
