"""zmqchat in a browser: an aiohttp gateway and a static page (``zmqchat-web``).

- ``hub``: many client sessions over one PUSH and one SUB (a publication decoded once, fanned out);
- ``person``: one name's session and the browser tabs that show it (resume, exactly-once sending);
- ``wire``: the page -> gateway half of the WebSocket protocol (pure);
- ``users``: the users file (scrypt), login tokens, failed-login limits;
- ``gateway``: the aiohttp application; ``cli``: the command line;
- ``static/``: the page (HTML, CSS, JavaScript modules; no build step, nothing fetched from elsewhere).

See docs/web.md.
"""
