"""sftpd's own SFTP v3 engine (draft-ietf-secsh-filexfer-02 plus the OpenSSH extensions).

- :mod:`.codec`: the wire format: constants, bounded parsing, reply framing;
- :mod:`.engine`: one SFTP session fed by bytes from any transport: packet framing,
  version negotiation, the dispatch table, concurrency with ordering rules, replies;
- :mod:`.ssh`: the transport for asyncssh channels (the ``sftp`` subsystem).

The engine knows nothing of backends: it decodes a request, hands it to
:class:`sftpd._requests.Requests` and encodes what comes back.
"""
