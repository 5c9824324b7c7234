from mosaic.platform import server
from identity_service.app import build
from identity_service.config import Settings


def main() -> None:
    server.main(Settings.from_env, build)


if __name__ == "__main__":
    main()
