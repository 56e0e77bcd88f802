unbrick-signature v1
purpose: manifest
key: ed25519:2d33763adc9814495a71b3f6893b7114
signature: p9sFxlNbIO/TnItV3uELFyIkU3TB+FVMkQRs2zTgQk2q1m+qsr9RHWYCPoJyGIXPKFWqd6/57hinZqaDEZ2vBQ==
