"""An example rotator plugin: the ``example`` vendor and the ``exdir`` store.

* :mod:`rotator_example.models` - the config models (cheap to import; the entry points);
* :mod:`rotator_example.issuer` - the vendor client, over HTTP;
* :mod:`rotator_example.store` - a directory holding one file per secret;
* :mod:`rotator_example.emulator` - the vendor, in process, for tests.
"""
