"""The lifecycle every owner of a native object shares (Context, Upscaler): close, with, and a __del__ that
never waits."""

from __future__ import annotations


class NativeOwner:
    _native = None

    def close(self) -> None:
        """Free the native object now, waiting for the call in flight (the core runs one call at a time, so
        also another object's). Safe to call more than once. It does not wait from inside a callback of a call,
        nor once the call ahead has waited a second for one of its callbacks (which may be waiting for this
        thread): the free then runs when that call ends. Ctrl-C stops the wait (the free still happens)."""
        native, self._native = self._native, None
        if native is not None:
            native.close()

    @property
    def closed(self) -> bool:
        return self._native is None

    def __enter__(self):
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def __del__(self) -> None:
        # Never waits: it may run in a garbage collection inside a callback or log handler of a core call.
        native = getattr(self, "_native", None)
        if native is not None:
            native.close(wait=False)

    def _require_native(self):
        native = self._native
        if native is None:
            raise ValueError(f"this {type(self).__name__} is closed")
        return native
