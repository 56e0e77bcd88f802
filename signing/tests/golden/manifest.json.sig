unbrick-signature v1
purpose: manifest
key: ed25519:4c23e051f810599e3bbc6cd879efe5de
signature: Cd8d0i5/Jk+yhmakMUd8OBUP934oqOH3kzORwQKQoPYliQplL/6OS7s6aYHdNKI6L+kBr5vYSvyH95gWCYoADw==
